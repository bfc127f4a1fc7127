"""Checkpoints: a directory of plain files that no crash can lose, read without pickle and validated whole.

    DIR/config.json      TransformerConfig fields
    DIR/model.npz        parameter name -> array (np.savez: one uncompressed .npy member per parameter)
    DIR/optimizer.npz    AdamW state (moments and step), when training
    DIR/state.json       the model's random generator state, plus what the caller adds (train.py: iteration,
                         best validation loss, the batch generator's state, the run's settings)
    DIR/tokenizer.json   the tokenizer as its save(directory) writes it: tokenizer.json for a CharTokenizer,
    DIR/vocab.json ...   vocab.json + merges.txt for a byte-level BPE one (read back by tokenizer.load_tokenizer)
    DIR/manifest.json    written last: this save's number and every other file's size and SHA-256

Saving (save_checkpoint) serializes the JSON files in memory first, so bad values fail before anything is
written; then it writes everything into DIR.incoming, fsyncs it and seals it with manifest.json, renames
DIR to DIR.previous and DIR.incoming to DIR, and removes DIR.previous. A copy is removed only while a newer
complete one exists, so at every instant one complete checkpoint exists under one of the three names, and
each save first finishes whatever an interrupted one left (settle). A failing disk (full, read-only) is a
CheckpointError that leaves the previous checkpoint as it was.

Reading goes through one resolver, resolve_directory: of DIR, DIR.incoming and DIR.previous (for DIR, or
for a training run's OUT_DIR/checkpoint), the complete copy (a valid manifest, every file at its size) with
the highest save number. read_checkpoint then checks all of it before returning any of it: checksums, JSON
types, every .npy header (name, shape, dtype) against config.parameter_shapes() before its data is read,
so a crafted header or a zip bomb allocates nothing, values, generator states. Anything wrong is a
CheckpointError. load_config, load_tokenizer, load_state and load_training_state are views of it.

From Python, TransformerLM.save(directory) / TransformerLM.load(directory) write and read a model (and its
tokenizer) this way; train.train saves the optimizer and the run's state too. This module builds no model
(transformer_lm imports it, not the reverse): Checkpoint.load_into fills a model its caller built.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from atomic_files import fsync_directory
from atomic_files import read_json as read_json_file
from device import array_module, to_host
from tokenizer import load_tokenizer as read_tokenizer_files
from transformer_config import TransformerConfig

if TYPE_CHECKING:
    from optim import AdamW
    from tokenizer import Tokenizer
    from transformer_lm import TransformerLM

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "numpy-gpt checkpoint, version 1"
REQUIRED_FILES = ("config.json", "model.npz", "state.json")
OPTIONAL_FILES = ("optimizer.npz", "tokenizer.json", "vocab.json", "merges.txt")
STAGING, PREVIOUS = ".incoming", ".previous"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, garbled or does not match the model it describes,
    or one that cannot be written."""


@dataclasses.dataclass
class Checkpoint:
    """One checkpoint, read and validated whole by read_checkpoint."""
    directory: Path              # the copy it was read from
    config: TransformerConfig
    parameters: dict             # name -> array, shapes config.parameter_shapes(), dtype config.numpy_dtype
    model_rng: dict              # the model's PCG64 state
    state: dict                  # the rest of state.json
    tokenizer: object            # a CharTokenizer, a ByteBPETokenizer or None
    optimizer_state: dict | None = None  # AdamW.state_dict() form, when read with optimizer=True

    def load_into(self, model: TransformerLM, restore_rng: bool = True) -> None:
        """Put the weights and the tokenizer (model.tokenizer) into a model built with this config; with
        restore_rng its dropout generator continues where the saved model's stood."""
        load_parameters(model, self.parameters, self.directory / "model.npz")
        if restore_rng:
            model.rng.bit_generator.state = self.model_rng
        model.tokenizer = self.tokenizer

    def restore(self, model: TransformerLM, optimizer: AdamW) -> None:
        """Put the weights, the optimizer's moments and the dropout generator's state into `model` and
        `optimizer` (read with optimizer=True); nothing changes unless all of it fits them."""
        load_parameters(model, self.parameters, self.directory / "model.npz", check_only=True)
        try:
            optimizer.load_state_dict(self.optimizer_state)
        except ValueError as error:
            raise CheckpointError(f"{self.directory / 'optimizer.npz'}: {error}") from None
        load_parameters(model, self.parameters, self.directory / "model.npz")
        model.rng.bit_generator.state = self.model_rng


# ---------------------------------------------------------------------------------------------------- saving

def save_checkpoint(directory: str | os.PathLike, model: TransformerLM, optimizer: AdamW | None = None,
                    tokenizer: Tokenizer | None = None, state: dict | None = None) -> None:
    """Write model (+ optimizer, tokenizer, JSON-serializable `state`) as the checkpoint `directory`; a crash at
    any point leaves the previous checkpoint or this one complete, and readers find whichever is newer."""
    directory = Path(directory)
    texts = {"config.json": to_json(dataclasses.asdict(model.config), "the model's config"),
             "state.json": to_json({"model_rng": model.rng.bit_generator.state, **(state or {})}, "the state")}
    staging = sibling(directory, STAGING)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        settle(directory)
        number = save_number(directory)[0] or 0
        staging.mkdir()
        for name, text in texts.items():
            (staging / name).write_bytes(text)
        # to_host: a GPU model's arrays are copied to the host to be written
        np.savez(staging / "model.npz", **{name: to_host(value) for name, value in model.parameters().items()})
        if optimizer is not None:
            moments = optimizer.state_dict()
            np.savez(staging / "optimizer.npz", **{key: to_host(value) for key, value in moments.items()})
        if tokenizer is not None:
            tokenizer.save(staging)
        seal(staging, number + 1)
        settle(directory)
    except OSError as error:
        if save_number(staging)[0] is None:  # a half-written copy only takes space (a full disk's, maybe)
            with contextlib.suppress(OSError):
                remove(staging, missing_ok=True)
        raise CheckpointError(f"cannot save the checkpoint {directory}: {error}; the previous checkpoint, if "
                              "any, is kept") from None


def to_json(data: object, what: str) -> bytes:
    try:
        return json.dumps(data, indent=2).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{what} cannot be saved as JSON: {error}") from None


def seal(staging: Path, number: int) -> None:
    """Make every file durable, then write the manifest that marks the copy complete, then make it durable."""
    files = {}
    for path in sorted(staging.iterdir()):
        if path.name == MANIFEST:
            continue
        with open(path, "rb") as file:
            os.fsync(file.fileno())
        files[path.name] = {"size": path.stat().st_size, "sha256": file_digest(path)}
    manifest = to_json({"format": MANIFEST_FORMAT, "save": number, "files": files}, "the manifest")
    with open(staging / MANIFEST, "wb") as file:
        file.write(manifest)
        file.flush()
        os.fsync(file.fileno())
    fsync_directory(staging)


def settle(directory: Path) -> None:
    """Finish what an interrupted save left: make DIR the newest complete copy and remove the other two.
    Every step keeps the newest complete copy in place, so a crash in here loses nothing either."""
    staging, previous = sibling(directory, STAGING), sibling(directory, PREVIOUS)
    newest = newest_copy(directory)[0]
    if newest == previous:  # DIR is missing or older: an interrupted swap (of an earlier version of this code)
        remove(staging, missing_ok=True)
        os.rename(previous, staging)
        newest = staging
    if newest == staging:
        if os.path.lexists(directory):
            remove(previous, missing_ok=True)
            os.rename(directory, previous)
        os.rename(staging, directory)
        fsync_directory(directory.parent)
    remove(staging, missing_ok=True)
    remove(previous, missing_ok=True)


def remove(path: Path, missing_ok: bool = False) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path) or not missing_ok:
        os.unlink(path)


def sibling(directory: Path, suffix: str) -> Path:
    directory = directory if directory.name else directory.absolute()  # "." has no name to add a suffix to
    return directory.with_name(directory.name + suffix)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ finding the copy

def resolve_directory(directory: str | os.PathLike) -> Path:
    """The copy every reader reads: the complete one with the highest save number among DIR, DIR.incoming
    and DIR.previous, for `directory` itself or else for `directory`/checkpoint (a training run's out dir)."""
    directory = Path(directory)
    problems = []
    for base in (directory, directory / "checkpoint"):
        newest, base_problems = newest_copy(base)
        if newest is not None:
            return newest
        problems += base_problems
    if problems:
        raise CheckpointError(f"no complete checkpoint in {directory}: " + "; ".join(problems))
    raise CheckpointError(f"no checkpoint in {directory}: expected {MANIFEST}, config.json and model.npz there "
                          f"(or in {directory / 'checkpoint'})")


def newest_copy(directory: Path) -> tuple[Path | None, list[str]]:
    """(the complete copy of `directory` with the highest save number or None, why the others are not complete).
    Ties go to the first of DIR, DIR.incoming, DIR.previous."""
    best, best_number, problems = None, -1, []
    for path in (directory, sibling(directory, STAGING), sibling(directory, PREVIOUS)):
        number, problem = save_number(path)
        if number is not None and number > best_number:
            best, best_number = path, number
        elif problem:
            problems.append(problem)
    return best, problems


def save_number(path: Path) -> tuple[int | None, str | None]:
    """(save number, None) for a complete copy at `path`, (None, why not) otherwise; (None, None) when there is
    nothing there. A copy written before manifests existed (all of REQUIRED_FILES, no manifest) counts as
    complete with number 0, except a staging copy, which was never finished."""
    if not (path / MANIFEST).is_file():
        if all((path / name).is_file() for name in REQUIRED_FILES) and not path.name.endswith(STAGING):
            return 0, None
        return None, (f"{path} has no {MANIFEST} (not a checkpoint, or an unfinished save)" if path.is_dir() else None)
    try:
        manifest = read_manifest(path)
        for name, entry in manifest["files"].items():
            if not (path / name).is_file():
                return None, f"checkpoint file {path / name} is missing"
            size = (path / name).stat().st_size
            if size != entry["size"]:
                return None, f"{path / name} is truncated or corrupt: {size} bytes, its manifest says {entry['size']}"
    except (CheckpointError, OSError) as error:
        return None, str(error)
    return manifest["save"], None


def read_manifest(path: Path) -> dict:
    """A copy's manifest, checked: {"format", "save": int >= 1, "files": {file name: {"size", "sha256"}}}."""
    manifest = read_json(path / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if (not isinstance(files, dict) or manifest.get("format") != MANIFEST_FORMAT
            or not is_integer(manifest.get("save"), minimum=1)):
        raise CheckpointError(f"{path / MANIFEST} is not a checkpoint manifest (expected format "
                              f"{MANIFEST_FORMAT!r}, a save number and a files object)")
    missing = sorted(set(REQUIRED_FILES) - set(files))
    unknown = sorted(set(files) - set(REQUIRED_FILES + OPTIONAL_FILES))
    if missing or unknown:
        raise CheckpointError(f"{path / MANIFEST} must list {list(REQUIRED_FILES)} and only known files; "
                              f"missing {missing}, unknown {unknown}")
    for name, entry in files.items():
        if (not isinstance(entry, dict) or not is_integer(entry.get("size"), minimum=0)
                or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64):
            raise CheckpointError(f"{path / MANIFEST}: the entry for {name} must be {{'size': bytes, 'sha256': hex}}")
    return manifest


# -------------------------------------------------------------------------------------------------- reading

def read_checkpoint(directory: str | os.PathLike, optimizer: bool = False, training: bool = False) -> Checkpoint:
    """The newest complete checkpoint in `directory` (see resolve_directory), every part validated before any is
    returned. optimizer: also read optimizer.npz (it must be there). training: state.json must also hold
    train.py's iteration, best_val_loss, data_rng and settings (always checked when present)."""
    path = resolve_directory(directory)
    verify = checksum_verifier(path)
    config = read_config(path, verify)

    def parameter_specs(n_tensors: int) -> dict[str, tuple[tuple[int, ...], tuple[np.dtype, ...]]]:
        # Listing the config's parameters costs O(n_layers): bound it first by the file, which must hold a dozen
        # tensors per layer (config.json might say n_layers=10**12).
        if config.n_layers > n_tensors:
            raise CheckpointError(f"{path / 'config.json'} declares n_layers={config.n_layers}, but "
                                  f"{path / 'model.npz'} holds only {n_tensors} tensors")
        return {name: (shape, (config.numpy_dtype,)) for name, shape in config.parameter_shapes().items()}
    parameters = read_arrays(path / "model.npz", verify, parameter_specs)
    model_rng, state = check_state(read_json(path / "state.json", verify), path / "state.json", training)
    tokenizer = read_tokenizer(path, verify)
    optimizer_state = None
    if optimizer or training:
        specs = {"step": ((), (np.dtype(np.int64), np.dtype(np.int32)))}
        for name, value in parameters.items():
            specs[f"exp_avg.{name}"] = specs[f"exp_avg_sq.{name}"] = (value.shape, (value.dtype,))
        optimizer_state = read_arrays(path / "optimizer.npz", verify, lambda n_tensors: specs)
        if optimizer_state["step"] < 0 or any((optimizer_state[f"exp_avg_sq.{name}"] < 0).any() for name in parameters):
            raise CheckpointError(f"{path / 'optimizer.npz'}: the step and the second moments must be >= 0")
    return Checkpoint(path, config, parameters, model_rng, state, tokenizer, optimizer_state)


def checksum_verifier(path: Path) -> Callable[[str], bool]:
    """A function that checks a file of the copy at `path` against the SHA-256 its manifest recorded (a copy
    written before manifests has none to check) and says which files the copy holds."""
    manifest = read_manifest(path) if (path / MANIFEST).is_file() else None

    def verify(name: str) -> bool:
        """True when the copy holds file `name`; CheckpointError if it does not hold what was saved."""
        if manifest is None:
            return (path / name).is_file()
        if name not in manifest["files"]:
            return False
        try:
            digest = file_digest(path / name)
        except OSError as error:
            raise CheckpointError(f"cannot read checkpoint file {path / name} ({error})") from None
        if digest != manifest["files"][name]["sha256"]:
            raise CheckpointError(f"checkpoint file {path / name} is truncated or corrupt: its SHA-256 differs from "
                                  f"the one {MANIFEST} recorded at the save (damaged or edited since)")
        return True
    return verify


def read_json(path: Path, verify: Callable[[str], bool] | None = None) -> object:
    """A JSON file's value (atomic_files.read_json: strict); with `verify`, the file is first checked against the
    manifest."""
    if verify is not None and not verify(path.name):
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        return read_json_file(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint file {path} ({error})") from None
    except ValueError as error:  # not UTF-8, not JSON, a repeated key, nested too deeply, too many digits
        raise CheckpointError(f"checkpoint file {path} is not valid JSON ({error})") from None


def read_config(path: Path, verify: Callable[[str], bool] | None = None) -> TransformerConfig:
    fields = read_json(path / "config.json", verify)
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path / 'config.json'} must hold a JSON object of TransformerConfig fields")
    unknown = sorted(set(fields) - {field.name for field in dataclasses.fields(TransformerConfig)})
    if unknown:
        raise CheckpointError(f"{path / 'config.json'} has unknown fields {unknown}")
    try:
        return TransformerConfig(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path / 'config.json'}: {error}") from None


def read_arrays(path: Path, verify: Callable[[str], bool], make_specs: Callable[[int], dict]) -> dict:
    """name -> array from an .npz file that must hold exactly the arrays `make_specs(number of members)` describes
    (name -> (shape, allowed dtypes)). Each member's .npy header is checked against its spec before its data
    is read, and members must be stored uncompressed, as np.savez writes them: nothing is allocated beyond what
    the specs say, and nothing is decompressed."""
    if not verify(path.name):
        raise CheckpointError(f"checkpoint file {path} is missing")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for member in members:
                if not member.filename.endswith(".npy"):
                    raise CheckpointError(f"{path}: member {member.filename!r} is not an .npy array")
            names = [member.filename.removesuffix(".npy") for member in members]
            specs = make_specs(len(members))
            missing, unexpected = sorted(set(specs) - set(names)), sorted(set(names) - set(specs))
            if missing or unexpected:
                raise CheckpointError(f"{path} does not match the config: missing tensors {missing}, "
                                      f"unexpected tensors {unexpected}")
            if len(names) != len(specs):
                raise CheckpointError(f"{path} holds some tensors twice")
            return {name: read_member(archive, member, *specs[name], path) for name, member in zip(names, members)}
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt ({error})") from None


def read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, shape: tuple, dtypes: tuple,
                path: Path) -> np.ndarray:
    """One .npy member of an .npz archive, checked against (shape, dtypes) before its data is read."""
    name = member.filename.removesuffix(".npy")
    if member.compress_type != zipfile.ZIP_STORED or member.compress_size != member.file_size:
        raise CheckpointError(f"{path}: tensor {name!r} is compressed; checkpoints hold arrays stored as np.savez "
                              "writes them (uncompressed)")
    with archive.open(member) as file:
        version = np.lib.format.read_magic(file)
        if version not in ((1, 0), (2, 0)):
            raise CheckpointError(f"{path}: tensor {name!r} has .npy format version {version}, expected 1.0 or 2.0")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        found_shape, fortran_order, dtype = read_header(file)
        if found_shape != shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {found_shape}, the config needs {shape}")
        if dtype not in dtypes:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype}, expected "
                                  f"{' or '.join(str(allowed) for allowed in dtypes)}")
        size = math.prod(shape) * dtype.itemsize
        if member.file_size != file.tell() + size:
            raise CheckpointError(f"{path}: tensor {name!r} holds {member.file_size - file.tell()} bytes of data, "
                                  f"its header says {size}")
        data = file.read(size)
        if len(data) != size or file.read(1):  # reading to the end also checks the member's CRC-32
            raise CheckpointError(f"{path}: tensor {name!r} is truncated")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise CheckpointError(f"{path}: tensor {name!r} holds NaN or infinite values")
    return array


def check_state(state: object, source: Path, training: bool) -> tuple[dict, dict]:
    """(the model's generator state, the rest of state.json), every entry checked."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{source} must hold a JSON object, got a JSON {type(state).__name__}")
    state = dict(state)
    if "model_rng" not in state:
        raise CheckpointError(f"{source} has no 'model_rng' (the model's random generator state)")
    model_rng = check_generator_state(state.pop("model_rng"), "model_rng", source)
    for key, check in TRAINING_STATE.items():
        if key in state:
            check(state[key], key, source)
        elif training:
            raise CheckpointError(f"{source} has no {key!r}: not the checkpoint of a training run")
    return model_rng, state


def check_training_entry(test: Callable[[object], bool], expected: str) -> Callable[[object, str, Path], None]:
    def check(value: object, key: str, source: Path) -> None:
        if not test(value):
            raise CheckpointError(f"{source}: {key!r} must be {expected}, got {value!r}")
    return check


def check_generator_state(value: object, key: str, source: Path) -> dict:
    """A PCG64 state (what np.random.default_rng uses) that a fresh PCG64 takes exactly as written."""
    expected = "a PCG64 state as bit_generator.state gives it"
    if not isinstance(value, dict) or value.get("bit_generator") != "PCG64":
        raise CheckpointError(f"{source}: {key!r} must be {expected}, got {value!r}")
    generator = np.random.PCG64()
    try:
        generator.state = value
    except (TypeError, ValueError, KeyError, OverflowError) as error:
        raise CheckpointError(f"{source}: {key!r} must be {expected} ({type(error).__name__}: {error})") from None
    if generator.state != value:  # a value PCG64 rounded or an entry it ignores: not what was saved
        raise CheckpointError(f"{source}: {key!r} must be {expected}, got {value!r}")
    return value


# What train.py keeps in state.json: each entry is checked when present, and required with training=True
# (the settings' values are train.resolve_settings' to check).
TRAINING_STATE = {
    "iteration": check_training_entry(lambda value: is_integer(value, minimum=0), "an integer >= 0"),
    "best_val_loss": check_training_entry(
        lambda value: isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value),
        "a number (Infinity before the first evaluation)"),
    "data_rng": check_generator_state,
    "settings": check_training_entry(lambda value: isinstance(value, dict), "a JSON object"),
}


def read_tokenizer(path: Path, verify: Callable[[str], bool]) -> Tokenizer | None:
    """The copy's tokenizer, or None when it was saved without one."""
    # Every tokenizer file is verified (not only the first found): the loader then picks the class.
    if not any([verify(name) for name in ("tokenizer.json", "vocab.json", "merges.txt")]):
        return None
    try:
        return read_tokenizer_files(path)
    except (OSError, TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"the tokenizer files in {path} are not valid ({error})") from None


def is_integer(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


# ------------------------------------------------------------------------------------- views of a checkpoint

def load_config(directory: str | os.PathLike) -> TransformerConfig:
    """The TransformerConfig of the newest complete checkpoint in `directory` (only config.json is read)."""
    path = resolve_directory(directory)
    return read_config(path, checksum_verifier(path))


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer | None:
    """The tokenizer of the newest complete checkpoint in `directory`, or None when it was saved without one
    (only the tokenizer files are read: train.py's tokens before a resumed run reads the rest)."""
    path = resolve_directory(directory)
    return read_tokenizer(path, checksum_verifier(path))


def load_state(directory: str | os.PathLike, training: bool = False) -> dict:
    """state.json of the newest complete checkpoint in `directory`, checked as read_checkpoint checks it, without
    the model's generator state (only state.json is read: train.py's settings before the run starts)."""
    path = resolve_directory(directory)
    return check_state(read_json(path / "state.json", checksum_verifier(path)), path / "state.json", training)[1]


def load_training_state(directory: str | os.PathLike, model: TransformerLM, optimizer: AdamW) -> dict:
    """Restore model weights, optimizer moments and the model's dropout generator; return the rest of
    state.json. Nothing changes unless the whole checkpoint is valid and matches `model`."""
    checkpoint = read_checkpoint(directory, optimizer=True)
    checkpoint.restore(model, optimizer)
    return checkpoint.state


def load_parameters(model: TransformerLM, arrays: dict, source: object, check_only: bool = False) -> None:
    """Copy name -> array into the model's parameters after checking that names and shapes match."""
    params = model.parameters()
    missing, unexpected = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match the model: missing tensors {missing}, "
                              f"unexpected tensors {unexpected}")
    for name, value in arrays.items():
        if value.shape != params[name].shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {value.shape}, "
                                  f"the model needs {params[name].shape}")
    if not check_only:
        for name, value in arrays.items():
            params[name][...] = array_module(params[name]).asarray(value)  # onto a GPU model's device

"""Checkpoints: a directory of plain files, written atomically and read without pickle.

    DIR/config.json      TransformerConfig fields
    DIR/model.npz        parameter name -> array (np.savez; read with allow_pickle=False)
    DIR/optimizer.npz    AdamW state (moments and step), when training
    DIR/state.json       iteration, best validation loss, training arguments, random generator states
    DIR/tokenizer.json   a CharTokenizer, or DIR/vocab.json + DIR/merges.txt for a byte-level BPE one

Atomic: everything is written into a fresh sibling directory first, then swapped in with renames.
A crash mid-save leaves the previous checkpoint complete, either at DIR or, during the swap's
one-rename window, at DIR.previous, which `load_checkpoint` falls back to.
"""
import dataclasses
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from tokenizer import ByteBPETokenizer, CharTokenizer
from transformer_lm import TransformerConfig, TransformerLM


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, garbled or does not match the model it describes."""


def save_checkpoint(directory, model, optimizer=None, tokenizer=None, state=None):
    """Write model (+ optimizer, tokenizer, JSON-serializable `state`) to `directory` atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(directory.name + ".incoming")
    previous = directory.with_name(directory.name + ".previous")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()

    write_json(staging / "config.json", dataclasses.asdict(model.config))
    np.savez(staging / "model.npz", **model.parameters())
    if optimizer is not None:
        np.savez(staging / "optimizer.npz", **optimizer.state_dict())
    if isinstance(tokenizer, CharTokenizer):
        tokenizer.save(staging / "tokenizer.json")
    elif tokenizer is not None:
        tokenizer.save(staging)  # a ByteBPETokenizer: vocab.json + merges.txt
    write_json(staging / "state.json", {"model_rng": model.rng.bit_generator.state, **(state or {})})
    for file in staging.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())

    shutil.rmtree(previous, ignore_errors=True)
    if directory.exists():
        directory.rename(previous)
    staging.rename(directory)
    shutil.rmtree(previous, ignore_errors=True)


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)


def resolve_directory(directory):
    """The checkpoint directory itself, its `checkpoint/` sub-directory (a training run's out dir),
    or the `.previous` copy a crash in the middle of a swap may have left."""
    directory = Path(directory)
    for candidate in (directory, directory / "checkpoint"):
        for path in (candidate, candidate.with_name(candidate.name + ".previous")):
            if (path / "config.json").is_file():
                return path
    raise CheckpointError(f"no checkpoint in {directory}: expected config.json and model.npz there "
                          f"(or in {directory / 'checkpoint'})")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint file {path} is not valid JSON ({error})") from None


def read_arrays(path):
    """name -> array from an .npz file, every array read now so that damage surfaces here."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupt ({error})") from None


def load_config(directory):
    directory = resolve_directory(directory)
    fields = read_json(directory / "config.json")
    if not isinstance(fields, dict):
        raise CheckpointError(f"{directory / 'config.json'} must hold a JSON object of TransformerConfig fields")
    unknown = sorted(set(fields) - {field.name for field in dataclasses.fields(TransformerConfig)})
    if unknown:
        raise CheckpointError(f"{directory / 'config.json'} has unknown fields {unknown}")
    try:
        return TransformerConfig(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / 'config.json'}: {error}") from None


def load_model(directory, seed=0):
    """A TransformerLM with the checkpoint's config and weights (names and shapes validated)."""
    directory = resolve_directory(directory)
    model = TransformerLM(load_config(directory), seed=seed)
    load_parameters(model, read_arrays(directory / "model.npz"), directory / "model.npz")
    return model


def load_parameters(model, arrays, source):
    params = model.parameters()
    missing, unexpected = sorted(set(params) - set(arrays)), sorted(set(arrays) - set(params))
    if missing or unexpected:
        raise CheckpointError(f"{source} does not match the config: missing tensors {missing}, "
                              f"unexpected tensors {unexpected}")
    for name, value in arrays.items():
        if value.shape != params[name].shape:
            raise CheckpointError(f"{source}: tensor {name!r} has shape {value.shape}, "
                                  f"the config needs {params[name].shape}")
        params[name][...] = value


def load_tokenizer(directory):
    """The checkpoint's tokenizer, or None when it was saved without one."""
    directory = resolve_directory(directory)
    if (directory / "tokenizer.json").is_file():
        try:
            return CharTokenizer.load(directory / "tokenizer.json")
        except (OSError, TypeError, ValueError) as error:
            raise CheckpointError(f"{directory / 'tokenizer.json'} is not a valid tokenizer ({error})") from None
    if (directory / "vocab.json").is_file():
        try:
            return ByteBPETokenizer.load(directory)
        except (OSError, ValueError) as error:
            raise CheckpointError(f"tokenizer files in {directory} are not valid ({error})") from None
    return None


def load_training_state(directory, model, optimizer):
    """Restore model weights, optimizer moments and the model's dropout generator; return state.json."""
    directory = resolve_directory(directory)
    load_parameters(model, read_arrays(directory / "model.npz"), directory / "model.npz")
    optimizer_state = read_arrays(directory / "optimizer.npz")
    try:
        optimizer.load_state_dict(optimizer_state)
    except ValueError as error:
        raise CheckpointError(f"{directory / 'optimizer.npz'}: {error}") from None
    state = read_json(directory / "state.json")
    model.rng.bit_generator.state = state.pop("model_rng")
    return state

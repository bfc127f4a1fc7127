"""Hostile checkpoints (issue 10): crashes mid-save, two runs on one out dir, full disks, crafted and damaged files."""
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import checkpoint
import train
from checkpoint import CheckpointError, read_checkpoint, resolve_directory, save_checkpoint, seal
from optim import AdamW
from tokenizer import CharTokenizer
from transformer_lm import TransformerConfig, TransformerLM

EMBEDDING = "decoder.token_embedding.weight"


def make_model(seed=0, **overrides):
    config = dict(vocab_size=11, d_model=8, n_heads=2, n_layers=1, max_seq_len=8, dtype="float64")
    return TransformerLM(TransformerConfig(**{**config, **overrides}), seed=seed)


def save_training_checkpoint(directory, seed=0):
    model = make_model(seed)
    optimizer = AdamW(model.parameters())
    ids = np.arange(8).reshape(2, 4)
    model.loss(ids, ids)
    optimizer.step(model.backward())
    state = dict(iteration=3, best_val_loss=1.5, data_rng=np.random.default_rng(1).bit_generator.state,
                 settings={"seed": 1})
    save_checkpoint(directory, model, optimizer, CharTokenizer.from_text("abcdefghijk"), state)
    return model


class Crash(Exception):
    """Stands for the process dying: not an OSError, so no clean-up handler catches it."""


# What the save protocol calls to write, move and delete; a crash may strike at any of them.
CRASH_POINTS = [(os, "rename"), (os, "replace"), (os, "unlink"), (os, "rmdir"), (os, "mkdir"), (os, "fsync"),
                (shutil, "rmtree"), (np, "savez")]


def inject_crash(monkeypatch, at_call, before_each_call=lambda: None):
    """Patch CRASH_POINTS so that call number `at_call` (counting from 1) raises Crash; returns the call counter."""
    calls = [0]

    def wrap(function):
        def wrapper(*args, **kwargs):
            before_each_call()
            calls[0] += 1
            if calls[0] == at_call:
                raise Crash(f"crash at call {at_call}: {function.__name__}{args}")
            return function(*args, **kwargs)
        return wrapper
    for module, name in CRASH_POINTS:
        # fsync is a crash point but no work here: durability across power cuts is not what a test can observe.
        function = (lambda descriptor: None) if name == "fsync" else getattr(module, name)
        monkeypatch.setattr(module, name, wrap(function))
    return calls


def embedding_of(directory):
    return TransformerLM.load(directory).parameters()[EMBEDDING]


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_a_crash_at_any_call_of_save_after_save_never_loses_the_checkpoint(tmp_path, monkeypatch, order):
    directory = tmp_path / "run" / "checkpoint"
    save_checkpoint(directory, make_model(seed=100))
    with monkeypatch.context() as patch:
        calls = inject_crash(patch, at_call=0)
        save_checkpoint(directory, make_model(seed=101))
    calls_per_save = calls[0]
    assert calls_per_save > 5

    def a_complete_copy_exists():  # checked before every call the protocol makes: "at every instant"
        assert checkpoint.newest_copy(directory)[0] is not None

    readable = embedding_of(directory)
    steps = range(1, calls_per_save + 2)
    for step, at_call in enumerate(steps if order == "forward" else reversed(steps)):
        new = make_model(seed=step)
        with monkeypatch.context() as patch:
            inject_crash(patch, at_call, a_complete_copy_exists)
            try:  # the state one crash leaves is where the next save starts
                save_checkpoint(directory, new)
            except Crash:
                pass
        now = embedding_of(tmp_path / "run")  # an out dir resolves to its checkpoint, whichever copy holds it
        assert np.array_equal(now, readable) or np.array_equal(now, new.parameters()[EMBEDDING]), at_call
        readable = now
    save_checkpoint(directory, make_model(seed=999))
    assert sorted(path.name for path in directory.parent.iterdir()) == ["checkpoint"]
    np.testing.assert_array_equal(embedding_of(directory), make_model(seed=999).parameters()[EMBEDDING])


def test_every_reader_finds_the_newest_complete_copy(tmp_path):
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, make_model(seed=1))
    save_checkpoint(directory, make_model(seed=2))
    # What a crash right after the first rename leaves: the old copy at .previous, the new one sealed at .incoming.
    directory.rename(tmp_path / "checkpoint.previous")
    old = tmp_path / "old"
    save_checkpoint(old, make_model(seed=1))
    old.rename(tmp_path / "checkpoint.incoming")
    (tmp_path / "checkpoint.previous").rename(tmp_path / "swap")
    (tmp_path / "checkpoint.incoming").rename(tmp_path / "checkpoint.previous")  # seed 1, save number 1
    (tmp_path / "swap").rename(tmp_path / "checkpoint.incoming")                 # seed 2, save number 2
    assert resolve_directory(tmp_path) == tmp_path / "checkpoint.incoming"
    np.testing.assert_array_equal(embedding_of(tmp_path), make_model(seed=2).parameters()[EMBEDDING])
    save_checkpoint(directory, make_model(seed=3))  # finishes the interrupted swap first
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint"]


def tiny_settings(max_iters):
    args = train.parse_args(["--max-iters", str(max_iters), "--n-layers", "1", "--d-model", "8", "--n-heads", "2",
                             "--batch-size", "4", "--eval-iters", "1", "--eval-interval", "1", "--log-interval", "100",
                             "--warmup-iters", "0", "--lr-decay-iters", "4", "--dtype", "float64", "--seed", "3"])
    return train.resolve_settings(args)


def final_weights(out_dir):
    return read_checkpoint(out_dir / "checkpoint", training=True).parameters


def test_training_resumes_exactly_after_a_crash_at_any_call_of_its_save(tmp_path, monkeypatch, capsys):
    train.run(tiny_settings(1), tmp_path / "base")
    reference = tmp_path / "reference"
    shutil.copytree(tmp_path / "base", reference)
    with monkeypatch.context() as patch:
        calls = inject_crash(patch, at_call=0)
        train.run(tiny_settings(2), reference, resume=True)  # saves once more, at iteration 2
    expected = final_weights(reference)
    for at_call in range(1, calls[0] + 1):
        out_dir = tmp_path / f"crash-{at_call}"
        shutil.copytree(tmp_path / "base", out_dir)
        with monkeypatch.context() as patch:
            inject_crash(patch, at_call)
            with pytest.raises(Crash):
                train.run(tiny_settings(2), out_dir, resume=True)
        train.run(tiny_settings(2), out_dir, resume=True)
        assert read_checkpoint(out_dir / "checkpoint", training=True).state["iteration"] == 2
        for name, value in expected.items():
            np.testing.assert_array_equal(final_weights(out_dir)[name], value, err_msg=f"crash at call {at_call}")


HOLD_LOCK = """
import sys, time
sys.path.insert(0, {root!r})
from atomic_files import exclusive_lock
with exclusive_lock({path!r}):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_run_on_a_held_out_dir_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    script = HOLD_LOCK.format(root=str(ROOT), path=str(out_dir / "train.lock"))
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "train.py", "--out-dir", str(out_dir), "--max-iters", "1",
                                 "--warmup-iters", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert f"is in use by another training run (pid {holder.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
        assert not (out_dir / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without unlocking; its lock file (naming it) is still there, and is simply taken over.
    assert f"pid {holder.pid}" in (out_dir / "train.lock").read_text()
    train.run(tiny_settings(1), out_dir)
    assert (out_dir / "metrics.jsonl").exists()


def test_a_full_disk_during_a_save_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, make_model(seed=1))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(CheckpointError, match="cannot save the checkpoint .*No space left on device.*previous"):
        save_checkpoint(directory, make_model(seed=2))
    monkeypatch.undo()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint"]  # the half-written copy is gone
    np.testing.assert_array_equal(embedding_of(directory), make_model(seed=1).parameters()[EMBEDDING])


def test_an_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    with pytest.raises(SystemExit, match="error: .*taken"):
        train.run(tiny_settings(1), tmp_path / "taken")
    assert (tmp_path / "taken").read_text() == "not a directory"


def test_a_config_with_numpy_scalars_saves_and_values_json_cannot_hold_write_nothing(tmp_path):
    tokens = np.array([3, 9, 4])
    config = TransformerConfig(vocab_size=tokens.max() + 1, d_model=np.int32(8), n_heads=2, n_layers=1,
                               dropout=np.float32(0.5), norm_first=np.bool_(True))
    assert [type(value) for value in (config.vocab_size, config.d_model, config.dropout, config.norm_first)] == [
        int, int, float, bool]
    save_checkpoint(tmp_path / "ok", TransformerLM(config))
    assert TransformerLM.load(tmp_path / "ok").config == config
    with pytest.raises(CheckpointError, match="int64 is not JSON serializable"):
        save_checkpoint(tmp_path / "bad", TransformerLM(config), state={"iteration": np.int64(3)})
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.incoming").exists()


# ------------------------------------------------------------------------------------------ crafted files

def npy_bytes(header, data=b""):
    """An .npy file with the given header dict (format 1.0)."""
    text = repr(header).encode("latin1")
    text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def replace_member(path, name, payload, compress_type=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path) as archive:
        members = {member: archive.read(member) for member in archive.namelist()}
    members[name + ".npy"] = payload
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            archive.writestr(zipfile.ZipInfo(member), data, compress_type=compress_type if member == name + ".npy"
                             else zipfile.ZIP_STORED)


def refuses_without_allocating(directory, message, limit=8 << 20):
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=message):
            TransformerLM.load(directory)
        assert tracemalloc.get_traced_memory()[1] < limit
    finally:
        tracemalloc.stop()


def test_an_npy_header_claiming_a_trillion_elements_is_refused_before_any_allocation(tmp_path):
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, make_model())
    replace_member(directory / "model.npz", EMBEDDING, npy_bytes(
        {"descr": "<f8", "fortran_order": False, "shape": (10**12,)}))
    seal(directory, 2)
    refuses_without_allocating(directory, r"has shape \(1000000000000,\), the config needs \(11, 8\)")


def test_a_header_agreeing_with_a_huge_config_still_needs_the_bytes(tmp_path):
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, make_model())
    fields = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**fields, "vocab_size": 125_000_000_000}))
    replace_member(directory / "model.npz", EMBEDDING, npy_bytes(
        {"descr": "<f8", "fortran_order": False, "shape": (125_000_000_000, 8)}))
    seal(directory, 2)
    refuses_without_allocating(directory, "holds 0 bytes of data, its header says 8000000000000")


def test_a_zip_bombed_model_npz_is_refused_without_decompressing(tmp_path):
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, make_model())
    header = {"descr": "<f8", "fortran_order": False, "shape": (11, 8)}
    bomb = npy_bytes(header, bytes(64 << 20))  # 64 MB of zeros that deflate to about 64 kB
    replace_member(directory / "model.npz", EMBEDDING, bomb, compress_type=zipfile.ZIP_DEFLATED)
    assert (directory / "model.npz").stat().st_size < 1 << 20
    seal(directory, 2)
    refuses_without_allocating(directory, f"tensor '{EMBEDDING}' is compressed")


@pytest.mark.parametrize("field,value,message", [
    ("vocab_size", 1e11, "vocab_size must be a positive integer, got 100000000000.0"),
    ("max_seq_len", 1e12, "max_seq_len must be a positive integer"),
    ("n_layers", 10**12, "declares n_layers=1000000000000, but .* holds only"),
    ("d_model", 10**9, r"has shape \(11, 8\), the config needs \(11, 1000000000\)"),
    ("dropout", "0.1", "dropout must be a number"),
    ("layer_norm_eps", None, "layer_norm_eps must be a number"),
    ("dropout", "NaN", "dropout must be a number"),
])
def test_crafted_config_values_are_refused_before_the_model_is_built(tmp_path, field, value, message):
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, make_model())
    fields = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**fields, field: value}))
    seal(directory, 2)
    refuses_without_allocating(directory, message)


def test_a_huge_max_seq_len_with_sinusoidal_positions_allocates_no_table(tmp_path):
    directory = tmp_path / "checkpoint"
    save_checkpoint(directory, make_model(positional="sinusoidal"))
    fields = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**fields, "max_seq_len": 10**12}))
    seal(directory, 2)
    assert TransformerLM.load(directory).config.max_seq_len == 10**12  # valid: sinusoidal positions have no limit


# ------------------------------------------------------------------------------ damaged and edited checkpoints

@pytest.mark.parametrize("name", ["config.json", "model.npz", "state.json", "optimizer.npz", "tokenizer.json"])
@pytest.mark.parametrize("edit", ["truncate", "flip a byte", "remove"])
def test_files_changed_after_the_save_are_caught_by_the_manifest(tmp_path, name, edit):
    directory = tmp_path / "checkpoint"
    save_training_checkpoint(directory)
    path = directory / name
    data = path.read_bytes()
    if edit == "truncate":
        path.write_bytes(data[:-1])
    elif edit == "flip a byte":
        path.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match=f"{name} is (truncated or corrupt|missing)"):
        read_checkpoint(directory, training=True)


def test_a_checkpoint_from_before_manifests_still_loads(tmp_path):
    directory = tmp_path / "checkpoint"
    model = save_training_checkpoint(directory)
    (directory / "manifest.json").unlink()
    np.testing.assert_array_equal(embedding_of(directory), model.parameters()[EMBEDDING])


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                          max_size=3), max_leaves=6)


def json_paths(value, prefix=()):
    """Every (path of keys, value) in a JSON document."""
    yield prefix, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_paths(item, prefix + (index,))


def set_path(document, path, value):
    if not path:
        return value
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pristine") / "checkpoint"
    save_training_checkpoint(directory)
    return directory


def must_load_or_refuse_clearly(directory):
    try:
        return read_checkpoint(directory, training=True)
    except CheckpointError:
        return None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(["state.json", "config.json", "manifest.json", "tokenizer.json"]), data=st.data())
def test_any_edit_of_a_json_file_loads_or_is_a_checkpoint_error(pristine, tmp_path_factory, file, data):
    directory = tmp_path_factory.mktemp("edited") / "checkpoint"
    shutil.copytree(pristine, directory)
    document = json.loads((directory / file).read_text())
    paths = [path for path, _ in json_paths(document)]
    path = data.draw(st.sampled_from(paths))
    replacement = data.draw(JSON_VALUES | st.just(10**30) | st.just(float("inf")))
    document = set_path(document, path, replacement)
    (directory / file).write_text(json.dumps(document))
    if file != "manifest.json":
        seal(directory, 2)
    loaded = must_load_or_refuse_clearly(directory)
    if loaded is not None:  # what loads must be usable: a model with those weights, and generators that run
        model = TransformerLM(loaded.config)
        loaded.restore(model, AdamW(model.parameters()))
        np.random.Generator(np.random.PCG64()).bit_generator.state = loaded.state["data_rng"]
        model.rng.random()


ARRAYS = st.sampled_from([
    np.zeros((11, 8), dtype=np.complex128), np.array(["a", "b"]), np.zeros((11, 8), dtype=np.float32),
    np.zeros((8, 11)), np.zeros(88), np.array(3.0), np.array(-1), np.full((11, 8), np.nan), np.zeros((11, 8), ">f8"),
    np.zeros((11, 8), dtype=[("x", "<f8")]), np.zeros((11, 8), dtype=np.int64), np.array([{"evil": 1}], dtype=object),
])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=st.sampled_from(["model.npz", "optimizer.npz"]), array=ARRAYS, data=st.data())
def test_any_array_replaced_in_an_npz_is_refused(pristine, tmp_path_factory, file, array, data):
    directory = tmp_path_factory.mktemp("arrays") / "checkpoint"
    shutil.copytree(pristine, directory)
    with zipfile.ZipFile(directory / file) as archive:
        name = data.draw(st.sampled_from(archive.namelist())).removesuffix(".npy")
    payload = io.BytesIO()
    np.save(payload, array, allow_pickle=True)
    replace_member(directory / file, name, payload.getvalue())
    seal(directory, 2)
    with pytest.raises(CheckpointError):
        read_checkpoint(directory, training=True)


def test_an_npy_file_renamed_npz_is_refused(tmp_path):
    directory = tmp_path / "checkpoint"
    save_training_checkpoint(directory)
    np.save(directory / "x.npy", np.zeros(3))
    os.replace(directory / "x.npy", directory / "optimizer.npz")
    seal(directory, 2)
    with pytest.raises(CheckpointError, match="optimizer.npz is truncated or corrupt"):
        read_checkpoint(directory, training=True)


def test_a_resume_from_a_damaged_checkpoint_exits_with_one_line(tmp_path):
    out_dir = tmp_path / "run"
    train.run(tiny_settings(1), out_dir)
    state = json.loads((out_dir / "checkpoint" / "state.json").read_text())
    state["data_rng"] = [1, 2, 3]  # a list for a dict
    (out_dir / "checkpoint" / "state.json").write_text(json.dumps(state))
    seal(out_dir / "checkpoint", 5)
    result = subprocess.run([sys.executable, "train.py", "--out-dir", str(out_dir), "--resume"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "'data_rng' must be a PCG64 state" in result.stderr


# ------------------------------------------------------------------------------------------------ the config

OPTIONS = [dict(tie_weights=tie, positional=positional, norm_first=norm_first, adaptive_span=span,
                max_span=4 if span else None)
           for tie in (True, False) for positional in ("learned", "sinusoidal") for norm_first in (True, False)
           for span in (True, False)]
OPTIONS += [dict(norm=norm, activation=activation, bias=bias, norm_first=norm_first)
            for norm in ("layernorm", "rmsnorm") for activation in ("gelu_tanh", "swiglu") for bias in (True, False)
            for norm_first in (True, False)]


@pytest.mark.parametrize("options", OPTIONS)
def test_parameter_shapes_are_the_models_without_building_it(options):
    config = TransformerConfig(vocab_size=13, d_model=6, n_heads=3, n_layers=2, max_seq_len=9, d_ff=10, **options)
    model_shapes = [(name, value.shape) for name, value in TransformerLM(config).parameters().items()]
    assert list(config.parameter_shapes().items()) == model_shapes


FIELD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                         st.sampled_from(["full", "learned", "gelu", "float64", "", "1"]),
                         st.sampled_from([np.int64(4), np.float32(0.25), np.bool_(True), np.str_("learned")]),
                         st.lists(st.integers(), max_size=2))


@settings(max_examples=150, deadline=None)
@given(fields=st.dictionaries(st.sampled_from([field for field in TransformerConfig.__dataclass_fields__]),
                              FIELD_VALUES, max_size=4))
def test_any_config_values_give_a_clear_error_or_plain_python_values(fields):
    try:
        config = TransformerConfig(**fields)
    except (TypeError, ValueError) as error:
        assert str(error)
        return
    for name, value in vars(config).items():
        assert value is None or type(value) in (int, float, bool, str), (name, value)
        if isinstance(value, float):
            assert np.isfinite(value), name
    assert TransformerConfig(**json.loads(json.dumps(vars(config)))) == config


"""Hostile Hugging Face directories and exports (hf_gpt2.py, convert.py) and hostile safetensors names.

Every damaged or crafted input must end in one clear error that names the file (ValueError for content,
FileNotFoundError / NotADirectoryError for missing or misplaced files), never in a raw traceback, a read
outside the model directory, an allocation sized by config.json, or a silently different model.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import random_gpt2_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import convert
import hf_gpt2
from checkpoint import save_checkpoint
from safetensors_io import SafetensorsError, TensorSpec, load_file, read_header, save_file
from tokenizer import ByteBPETokenizer
from transformer_lm import TransformerLM

REPOSITORY = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# The saved model's config.json shape fields (written out here, not read from the code under test).
SHAPE = dict(vocab_size=31, n_positions=23, n_embd=12, n_layer=2, n_head=3)


small_model = random_gpt2_model


def assert_same_parameters(loaded, model):
    assert loaded.parameters().keys() == model.parameters().keys()
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[name], value.astype(np.float32), err_msg=name)


class ConfigRecordingLM(TransformerLM):
    """TransformerLM that records the config of every model built: a loader may only build a model whose
    shapes the weight files have confirmed."""

    built = []

    def __init__(self, config, seed=0):
        ConfigRecordingLM.built.append(config)
        super().__init__(config, seed)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(directory, model): a small model written by save_pretrained, to be copied, never edited."""
    directory = tmp_path_factory.mktemp("exported")
    model = small_model()
    model.save_pretrained(directory)
    return directory, model


@pytest.fixture
def copy_of(tmp_path, exported):
    directory = tmp_path / "model"
    shutil.copytree(exported[0], directory)
    return directory


def write_json(path, content):
    path.write_text(json.dumps(content), encoding="utf-8")


def edit_config(directory, **changes):
    config = json.loads((directory / "config.json").read_text())
    write_json(directory / "config.json", {**config, **changes})


def assert_refused(directory, error=ValueError, match=None, shape_of=None, expected_shape=None):
    """Loading `directory` raises `error` whose message names the directory (and matches `match`), without
    building a model of any other shape than the one the files hold: shape_of(config) == expected_shape for every
    config built (default: built_shape and SHAPE, the GPT-2 export's)."""
    shape_of, expected_shape = shape_of or built_shape, expected_shape or SHAPE
    ConfigRecordingLM.built.clear()
    with pytest.raises(error, match=match) as raised:
        ConfigRecordingLM.from_pretrained(directory)
    assert str(directory) in str(raised.value)
    assert all(shape_of(config) == expected_shape for config in ConfigRecordingLM.built)
    return raised.value


def built_shape(config):
    return dict(vocab_size=config.vocab_size, n_positions=config.max_seq_len, n_embd=config.d_model,
                n_layer=config.n_layers, n_head=config.n_heads)


def tensor_shape_of(shape):
    """The fields of a built_shape that the tensors' shapes determine (all but the head count)."""
    return {name: value for name, value in shape.items() if name != "n_head"}


def tensor_shape(config):
    return tensor_shape_of(built_shape(config))


# ----------------------------------------------------------------------------------------------------------
# config.json: nothing is allocated before the weights confirm its shapes


@pytest.mark.parametrize("field, value", [
    ("vocab_size", 1e11), ("n_positions", 1e12),                         # the reproducers
    ("vocab_size", 10**11), ("n_positions", 10**12), ("n_embd", 3 * 10**8), ("n_layer", 10**9),
    ("n_inner", 10**12), ("vocab_size", 2**80),
], ids=["vocab-1e11", "positions-1e12", "vocab-int", "positions-int", "n_embd", "n_layer", "n_inner", "2**80"])
def test_huge_config_sizes_are_refused_before_allocating(copy_of, field, value):
    edit_config(copy_of, **{field: value})
    tracemalloc.start()
    try:
        assert_refused(copy_of)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # the model itself is 20 kB; a model of these sizes would be gigabytes


def test_a_consistent_but_larger_config_is_refused_for_a_missing_layer(copy_of):
    edit_config(copy_of, n_layer=3)
    assert_refused(copy_of, match="n_layer=3")


@pytest.mark.parametrize("content", [[1, 2], "gpt2", 5, None], ids=["list", "string", "number", "null"])
def test_config_that_is_not_a_json_object_is_refused(copy_of, content):
    write_json(copy_of / "config.json", content)
    assert_refused(copy_of, match="expected a JSON object")


@pytest.mark.parametrize("text, match", [
    (b"\xff\xfe{", "not UTF-8"), (b"{", "not valid JSON"), (b"[" * 100_000, "nested too deeply|not valid JSON"),
    (b'{"vocab_size": 1' + b"0" * 5000 + b"}", "not valid JSON"),
], ids=["not-utf8", "truncated", "deep", "5000-digit-int"])
def test_config_that_is_not_json_is_refused(copy_of, text, match):
    (copy_of / "config.json").write_bytes(text)
    assert_refused(copy_of, match=match)


@pytest.mark.parametrize("field, value", [
    ("activation_function", ["gelu"]), ("activation_function", {"a": 1}), ("layer_norm_epsilon", "1e-5"),
    ("layer_norm_epsilon", None), ("resid_pdrop", "0.1"), ("tie_word_embeddings", None), ("n_head", 0),
    ("n_embd", -12), ("n_layer", True), ("vocab_size", "31"), ("n_positions", None), ("n_inner", 48.0),
], ids=lambda value: repr(value)[:20])
def test_config_values_of_the_wrong_type_are_refused(copy_of, field, value):
    edit_config(copy_of, **{field: value})
    assert_refused(copy_of, match=field)


CONFIG_FIELDS = ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "layer_norm_epsilon",
                 "resid_pdrop", "tie_word_embeddings", "activation_function", "model_type", "scale_attn_weights"]
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2, 3, 12, 23, 31, 48, 10**12]),
    st.floats(allow_nan=True, allow_infinity=False), st.text(max_size=4),
    st.lists(st.integers(0, 40), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


def load_the_same_or_refused(copy, model):
    """Load `copy`: a ValueError naming it, or (returned) a model with `model`'s parameters; either way no model
    was built with other tensor shapes than the saved one's. Returns None when refused."""
    ConfigRecordingLM.built.clear()
    try:
        loaded = ConfigRecordingLM.from_pretrained(copy)
    except ValueError as error:
        assert str(copy) in str(error)
        loaded = None
    else:
        assert_same_parameters(loaded, model)
    assert all(tensor_shape(config) == tensor_shape_of(SHAPE) for config in ConfigRecordingLM.built)
    return loaded


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(CONFIG_FIELDS), JSON_VALUES, min_size=1, max_size=3))
def test_mutated_config_loads_the_same_model_or_is_refused_by_name(exported, changes):
    directory, model = exported
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "model"
        shutil.copytree(directory, copy)
        # NaN and infinity are not JSON, but Python's json module reads them, so files may hold them.
        edit_config(copy, **changes)
        loaded = load_the_same_or_refused(copy, model)
        # The head count is the one field the tensors do not pin down: any divisor of n_embd is a valid
        # reading of the same weights, so it must be the one config.json gives.
        assert loaded is None or loaded.config.n_heads == changes.get("n_head", SHAPE["n_head"])


def test_config_json_that_is_a_directory_or_absent_is_named(copy_of):
    (copy_of / "config.json").unlink()
    assert_refused(copy_of, FileNotFoundError, match="no config.json")
    (copy_of / "config.json").mkdir()
    assert_refused(copy_of, FileNotFoundError, match="no config.json")


@pytest.mark.parametrize("make", [lambda path: None, lambda path: path.write_text("x")], ids=["missing", "a-file"])
def test_model_path_that_is_not_a_directory_is_refused(tmp_path, make):
    path = tmp_path / "model"
    make(path)
    with pytest.raises(OSError, match="not a directory") as raised:
        TransformerLM.from_pretrained(path)
    assert str(path) in str(raised.value)


# ----------------------------------------------------------------------------------------------------------
# model.safetensors.index.json: shards inside the directory, and index and shards in agreement


def shard(directory, weight_map=None, index=None):
    """Split the directory's model.safetensors into two shards plus an index; `weight_map` (tensor ->
    shard name) edits the index's map, `index` replaces the whole index."""
    tensors = dict(load_file(directory / "model.safetensors", mmap=False))
    (directory / "model.safetensors").unlink()
    names = sorted(tensors)
    files = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, file_names in files.items():
        save_file({name: tensors[name] for name in file_names}, directory / file, metadata={"format": "pt"})
    mapping = {name: file for file, file_names in files.items() for name in file_names}
    mapping.update(weight_map or {})
    content = index if index is not None else {"metadata": {"total_size": 0}, "weight_map": mapping}
    write_json(directory / "model.safetensors.index.json", content)
    return mapping


def test_sharded_directory_loads(copy_of, exported):
    shard(copy_of)
    assert_same_parameters(TransformerLM.from_pretrained(copy_of), exported[1])


def outside_copy_of_shard(directory, outside):
    """A valid copy of shard 1 outside the model directory: what an escaping shard name would read."""
    outside.mkdir()
    shutil.copy(directory / "model-00001-of-00002.safetensors", outside / "model-00001-of-00002.safetensors")
    return outside / "model-00001-of-00002.safetensors"


@pytest.mark.parametrize("escape", ["absolute", "dot-dot", "subdirectory", "dot", "empty", "backslash", "nul"])
def test_shard_names_that_leave_the_directory_are_refused(copy_of, tmp_path, escape):
    mapping = shard(copy_of)
    outside = outside_copy_of_shard(copy_of, tmp_path / "outside")
    (copy_of / "sub").mkdir()
    shutil.copy(outside, copy_of / "sub" / outside.name)
    name = {"absolute": str(outside), "dot-dot": f"../outside/{outside.name}", "subdirectory": f"sub/{outside.name}",
            "dot": ".", "empty": "", "backslash": f"..\\outside\\{outside.name}", "nul": "model\0.safetensors"}[escape]
    first_shard_tensors = {tensor: name for tensor, file in mapping.items() if file == outside.name}
    (copy_of / outside.name).unlink()  # so that only the escaping name could supply these tensors
    write_json(copy_of / "model.safetensors.index.json", {"weight_map": {**mapping, **first_shard_tensors}})
    assert_refused(copy_of, match="expected the name of a file in the same directory")


def test_a_shard_that_is_a_symlink_inside_the_directory_loads(copy_of, tmp_path, exported):
    """huggingface_hub's cache stores every file of a snapshot as a symlink into ../../blobs, so a link in
    the directory is the directory's own file, as it is for model.safetensors."""
    shard(copy_of)
    outside = outside_copy_of_shard(copy_of, tmp_path / "blobs")
    (copy_of / outside.name).unlink()
    (copy_of / outside.name).symlink_to(outside)
    assert_same_parameters(TransformerLM.from_pretrained(copy_of), exported[1])


@pytest.mark.parametrize("index, match", [
    ([1, 2], "expected a JSON object"),
    ({"metadata": {}}, "weight_map"),
    ({"weight_map": [["transformer.wte.weight", "model-00001-of-00002.safetensors"]]}, "weight_map"),
    ({"weight_map": {}}, "non-empty 'weight_map'"),
    ({"weight_map": None}, "weight_map"),
], ids=["list", "no-weight-map", "weight-map-list", "empty", "null"])
def test_malformed_index_is_refused(copy_of, index, match):
    shard(copy_of, index=index)
    assert_refused(copy_of, match=match)


@pytest.mark.parametrize("shard_name", [7, None, ["model-00001-of-00002.safetensors"], {"a": 1}, True],
                         ids=["int", "null", "list", "object", "bool"])
def test_shard_name_that_is_not_a_string_is_refused(copy_of, shard_name):
    shard(copy_of, weight_map={"transformer.wte.weight": shard_name})
    assert_refused(copy_of, match="transformer.wte.weight")


@pytest.mark.parametrize("listed", ["transformer.h.9.ln_1.weight", "transformer.wte.weight"],
                         ids=["in-no-shard", "in-the-other-shard"])
def test_tensor_in_the_index_but_not_in_its_shard_is_refused(copy_of, listed):
    mapping = shard(copy_of)
    first = min(mapping.values())  # shards are checked in name order
    assert mapping.get(listed) != first  # stored nowhere, or in the second shard
    mapping[listed] = first
    write_json(copy_of / "model.safetensors.index.json", {"weight_map": mapping})
    assert_refused(copy_of, match=f"lacks tensor '{listed}'")


def test_tensor_in_a_shard_but_not_in_the_index_is_refused(copy_of):
    mapping = shard(copy_of)
    del mapping["transformer.ln_f.bias"]
    write_json(copy_of / "model.safetensors.index.json", {"weight_map": mapping})
    assert_refused(copy_of, match="holds tensor 'transformer.ln_f.bias'.*does not assign")


def test_tensor_listed_in_a_shard_that_is_missing_is_refused(copy_of):
    shard(copy_of, weight_map={"transformer.wte.weight": "model-00003-of-00003.safetensors"})
    assert_refused(copy_of, match="model-00003-of-00003.safetensors', which is not a file")


def test_shard_that_is_not_safetensors_is_refused(copy_of):
    shard(copy_of, weight_map={"transformer.wte.weight": "config.json"})
    assert_refused(copy_of, SafetensorsError)


SHARD_NAMES = st.one_of(
    st.sampled_from(["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "config.json",
                     "model.safetensors.index.json", "missing.safetensors", "..", "/etc/passwd",
                     "../model/model-00001-of-00002.safetensors", ""]),
    st.none(), st.integers(), st.text(max_size=5), st.lists(st.text(max_size=2), max_size=2),
)


@FUZZ
@given(edits=st.dictionaries(st.integers(0, 40), SHARD_NAMES, max_size=3), drop=st.sets(st.integers(0, 40), max_size=2),
       wrap=st.sampled_from(["map", "list", "no-map", "map-in-list"]))
def test_mutated_index_loads_the_same_model_or_is_refused_by_name(exported, edits, drop, wrap):
    directory, model = exported
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "model"
        shutil.copytree(directory, copy)
        mapping = shard(copy)
        names = sorted(mapping)
        for position in drop:
            mapping.pop(names[position % len(names)], None)
        for position, shard_name in edits.items():
            mapping[names[position % len(names)]] = shard_name
        index = {"map": {"weight_map": mapping}, "list": list(mapping.items()), "no-map": {"mapping": mapping},
                 "map-in-list": [{"weight_map": mapping}]}[wrap]
        write_json(copy / "model.safetensors.index.json", index)
        load_the_same_or_refused(copy, model)


# ----------------------------------------------------------------------------------------------------------
# Tokenizer files: which ones are looked for, and errors that name the directory


@pytest.mark.parametrize("present", ["vocab.json", "merges.txt"])
def test_half_a_tokenizer_is_refused_not_dropped(copy_of, present):
    (copy_of / present).write_text("{}" if present == "vocab.json" else "#version: 0.2\n", encoding="utf-8")
    assert_refused(copy_of, match=f"has {present} but no")


@pytest.mark.parametrize("content", [b"[1, 2]", b"\xff", b'{"model": 5}'], ids=["list", "not-utf8", "model-5"])
def test_broken_tokenizer_json_is_refused_naming_the_directory(copy_of, content):
    (copy_of / "tokenizer.json").write_bytes(content)
    assert_refused(copy_of, match="cannot load the tokenizer")


# ----------------------------------------------------------------------------------------------------------
# save_pretrained: the export as a whole


def bpe_tokenizer():
    return ByteBPETokenizer.train("the cat sat on the mat, the cat ate the rat. " * 20, vocab_size=270)


def test_saving_over_an_export_leaves_nothing_of_the_old_one(tmp_path):
    old = small_model(seed=1, vocab_size=270)
    old.tokenizer = bpe_tokenizer()
    old.save_pretrained(tmp_path)
    for name in ("model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
                 "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "README.md").write_text("mine")

    new = small_model(seed=2, vocab_size=270)  # no tokenizer
    new.save_pretrained(tmp_path)
    assert sorted(file.name for file in tmp_path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = TransformerLM.from_pretrained(tmp_path)
    assert loaded.tokenizer is None
    assert_same_parameters(loaded, new)


def test_a_new_tokenizer_replaces_the_old_one(tmp_path):
    model = small_model(vocab_size=300)
    model.tokenizer = bpe_tokenizer()
    model.save_pretrained(tmp_path)
    model.tokenizer = ByteBPETokenizer.train("zzz yyy xxx www " * 30, vocab_size=260)
    model.save_pretrained(tmp_path)
    text = "zzz yyy the cat"
    assert TransformerLM.from_pretrained(tmp_path).tokenizer.encode(text) == model.tokenizer.encode(text)


def test_saving_onto_an_existing_file_is_refused(tmp_path):
    path = tmp_path / "export"
    path.write_text("keep me")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        small_model().save_pretrained(path)
    assert path.read_text() == "keep me"


def test_saving_into_a_train_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path / "checkpoint", small_model())
    before = sorted(file.name for file in (tmp_path / "checkpoint").iterdir())
    with pytest.raises(ValueError, match="holds a train.py checkpoint"):
        small_model().save_pretrained(tmp_path / "checkpoint")
    assert sorted(file.name for file in (tmp_path / "checkpoint").iterdir()) == before


def directory_snapshot(directory):
    return {file.name: file.read_bytes() for file in sorted(Path(directory).iterdir())}


@pytest.mark.parametrize("field, value", [
    ("vocab_size", np.int64(31)), ("d_ff", np.int32(48)), ("layer_norm_eps", np.float32(1e-5)),
    ("dropout", float("nan")), ("dropout", object()),
], ids=["int64-vocab", "int32-d_ff", "float32-eps", "nan-dropout", "object"])
def test_config_that_cannot_be_json_is_refused_before_writing_anything(exported, tmp_path, field, value):
    shutil.copytree(exported[0], tmp_path / "export")
    before = directory_snapshot(tmp_path / "export")
    model = small_model(seed=3)
    setattr(model.config, field, value)  # changed after construction, past the config's own checks
    for path in (tmp_path / "export", tmp_path / "fresh"):
        with pytest.raises(ValueError, match="cannot be written as config.json"):
            model.save_pretrained(path)
    assert directory_snapshot(tmp_path / "export") == before
    assert not (tmp_path / "fresh").exists()


def test_a_failed_write_keeps_the_earlier_export_and_leaves_no_staging(exported, tmp_path, monkeypatch):
    shutil.copytree(exported[0], tmp_path / "export")
    before = directory_snapshot(tmp_path / "export")

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(hf_gpt2, "save_file", no_space)
    with pytest.raises(OSError, match="No space left"):
        small_model(seed=4).save_pretrained(tmp_path / "export")
    assert directory_snapshot(tmp_path / "export") == before  # no staging directory left either


def crash_at_call(number, monkeypatch):
    """Make the `number`-th call of os.replace or Path.unlink (counted together) raise, as a crash would."""
    calls = []

    def counted(real):
        def operation(*args, **kwargs):
            calls.append(real)
            if len(calls) == number:
                raise OSError("simulated crash")
            return real(*args, **kwargs)
        return operation
    monkeypatch.setattr(os, "replace", counted(os.replace))
    monkeypatch.setattr(Path, "unlink", counted(Path.unlink))


def test_a_crash_at_any_rename_never_loads_a_mix_of_two_exports(tmp_path, monkeypatch):
    """Each os.replace / Path.unlink of a save over an earlier export in turn raises; the directory then
    loads as the old export, the new one, or not at all (no config.json), never as parts of both."""
    old, new = small_model(seed=5, vocab_size=270), small_model(seed=6, vocab_size=270)
    old.tokenizer = bpe_tokenizer()  # the new export has none, so a stale tokenizer file would show
    outcomes = []
    for crash_at in range(1, 12):
        directory = tmp_path / f"export-{crash_at}"
        old.save_pretrained(directory)
        crash_at_call(crash_at, monkeypatch)
        try:
            new.save_pretrained(directory)
        except OSError:
            pass
        monkeypatch.undo()
        try:
            loaded = TransformerLM.from_pretrained(directory)
        except FileNotFoundError as error:
            assert "no config.json" in str(error)
            outcomes.append("refused")
            continue
        is_old = np.array_equal(loaded.parameters()["decoder.token_embedding.weight"],
                                old.parameters()["decoder.token_embedding.weight"])
        assert_same_parameters(loaded, old if is_old else new)
        assert (loaded.tokenizer is not None) == is_old
        outcomes.append("old" if is_old else "new")
    # Crashes while writing keep the old export, crashes in the swap refuse, and past the last call the save
    # completes: every stage was reached.
    assert outcomes[0] == "old" and "refused" in outcomes and outcomes[-1] == "new"


# ----------------------------------------------------------------------------------------------------------
# convert.py


@pytest.fixture
def run_dir(tmp_path):
    save_checkpoint(tmp_path / "run" / "checkpoint", small_model())
    (tmp_path / "a-file").write_text("keep me")
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "{tmp}/missing", "--out", "{tmp}/hf"], "no checkpoint in"),
    (["--checkpoint", "{tmp}/a-file", "--out", "{tmp}/hf"], "no checkpoint in"),
    (["--checkpoint", "{tmp}/run", "--out", "{tmp}/a-file"], "exists and is not a directory"),
    (["--checkpoint", "{tmp}/run", "--out", "{tmp}/run"], "where the checkpoint .* is found"),
    (["--checkpoint", "{tmp}/run", "--out", "{tmp}/run/checkpoint"], "where the checkpoint .* is found"),
    (["--hf-model", "{tmp}/missing"], "not a directory"),
    (["--hf-model", "{tmp}/a-file"], "not a directory"),
    (["--hf-model", "{tmp}/run"], "no config.json"),
], ids=["missing-dir", "file-as-checkpoint", "out-is-a-file", "out-is-the-run", "out-is-the-checkpoint",
        "missing-hf-dir", "file-as-hf-dir", "hf-dir-without-config"])
def test_convert_hostile_arguments_give_one_error_line(run_dir, args, message):
    checkpoint_files = directory_snapshot(run_dir / "run" / "checkpoint")
    with pytest.raises(SystemExit, match=f"^error: .*{message}") as raised:
        convert.main([arg.format(tmp=run_dir) for arg in args])
    assert "\n" not in str(raised.value.code)
    assert (run_dir / "a-file").read_text() == "keep me"
    assert directory_snapshot(run_dir / "run" / "checkpoint") == checkpoint_files
    assert not (run_dir / "hf").exists()


def test_convert_process_exits_non_zero_without_traceback(run_dir, copy_of):
    edit_config(copy_of, n_positions=10**12)
    for args in (["--checkpoint", str(run_dir / "run"), "--out", str(run_dir / "a-file")],
                 ["--hf-model", str(copy_of)]):
        result = subprocess.run([sys.executable, str(REPOSITORY / "convert.py"), *args], capture_output=True,
                                text=True, cwd=REPOSITORY, timeout=60)
        assert result.returncode == 1
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------------------
# safetensors: names and metadata that cannot be UTF-8, and headers read alone


@pytest.mark.parametrize("tensors, metadata, error, match", [
    ({"\ud800": np.zeros(2, np.float32)}, None, SafetensorsError, "lone surrogate"),
    ({"w\udfff": np.zeros(2, np.float32)}, None, SafetensorsError, "lone surrogate"),
    ({"w": np.zeros(2, np.float32)}, {"\ud800": "x"}, SafetensorsError, "lone surrogate"),
    ({"w": np.zeros(2, np.float32)}, {"k": "\ud800"}, SafetensorsError, "lone surrogate"),
    ({b"w": np.zeros(2, np.float32)}, None, TypeError, "must be str"),
    ({None: np.zeros(2, np.float32)}, None, TypeError, "must be str"),
    ({"w": np.zeros(2, np.float32)}, {"k": None}, TypeError, "str -> str"),
    ({"w": np.zeros(2, np.float32)}, ["k"], TypeError, "str -> str"),
], ids=["surrogate-name", "surrogate-suffix", "surrogate-metadata-key", "surrogate-metadata-value", "bytes-name",
        "none-name", "none-metadata-value", "list-metadata"])
def test_unwritable_names_and_metadata_are_refused_before_touching_the_file(tmp_path, tensors, metadata, error,
                                                                            match):
    path = tmp_path / "x.safetensors"
    save_file({"old": np.ones(1, np.float32)}, path)
    before = path.read_bytes()
    with pytest.raises(error, match=match):
        save_file(tensors, path, metadata=metadata)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["x.safetensors"]


def test_bf16_names_given_as_one_string_is_refused(tmp_path):
    with pytest.raises(TypeError, match="bf16_names"):
        save_file({"w": np.zeros(2, np.float32)}, tmp_path / "x.safetensors", bf16_names="w")


@FUZZ
@given(name=st.text(max_size=6))
def test_any_str_name_round_trips_or_is_refused_clearly(name):
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "x.safetensors"
        tensors = {name: np.arange(3, dtype=np.float32)}
        try:
            save_file(tensors, path, metadata={name: name} if name != "__metadata__" else None)
        except SafetensorsError:
            assert name == "__metadata__" or any(0xD800 <= ord(char) <= 0xDFFF for char in name)
        else:
            np.testing.assert_array_equal(load_file(path)[name], tensors[name])
            assert read_header(path) == {name: TensorSpec("F32", (3,))}


def test_a_header_holding_a_lone_surrogate_escape_is_refused(tmp_path):
    header = b'{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    header += b" " * (-len(header) % 8)
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    for read in (load_file, read_header):
        with pytest.raises(SafetensorsError, match="lone surrogate"):
            read(path)


def test_read_header_gives_dtypes_and_shapes_in_header_order(tmp_path):
    path = tmp_path / "x.safetensors"
    save_file({"b": np.zeros((2, 3), np.float16), "a": np.zeros((0, 4), np.int8), "c": np.zeros((), np.float32)},
              path, bf16_names=["c"])
    assert list(read_header(path).items()) == [("a", ("I8", (0, 4))), ("b", ("F16", (2, 3))), ("c", ("BF16", ()))]

"""Hostile Llama / Mistral / Qwen2 directories (hf_llama.py): every option that would compute differently from
what this model implements, and every damaged or crafted config.json or tensor, ends in one ValueError that names
the directory and the field or tensor, never in a raw traceback, an allocation sized by config.json, or a model
that loads and silently computes something else. (The shard, index and export machinery shared with GPT-2 is
covered by test_hostile_hf.py.)
"""
import json
import shutil
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import test_hostile_hf as hostile_hf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hf_gpt2 import edit_config, edit_tensors, replace_tensor
from test_hostile_hf import ConfigRecordingLM, assert_same_parameters

from safetensors_io import load_file, save_file
from transformer_lm import TransformerConfig, TransformerLM

FUZZ = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# The saved model's shape as config.json spells it (written out here, not read from the code under test).
SHAPE = dict(vocab_size=37, hidden_size=24, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
             intermediate_size=20)


def small_model(seed=0, **overrides):
    """A Llama-style model of SHAPE, untied, every parameter drawn from N(0, 0.5^2), in eval mode."""
    fields = dict(vocab_size=37, d_model=24, n_heads=6, n_kv_heads=2, n_layers=2, d_ff=20, max_seq_len=32,
                  dropout=0.0, positional="rope", norm="rmsnorm", activation="swiglu", norm_first=True, bias=False,
                  tie_weights=False, init="gpt2")
    model = TransformerLM(TransformerConfig(**{**fields, **overrides}), seed=seed)
    rng = np.random.default_rng(seed)
    for value in model.parameters().values():
        value[...] = rng.normal(0.0, 0.5, value.shape)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(directory, model) for each architecture: small models written by save_pretrained, to be copied."""
    models = {"llama": small_model(), "qwen2": small_model(qkv_bias=True),
              "mistral": small_model(attention="sliding", window=4)}
    directories = {}
    for name, model in models.items():
        directories[name] = tmp_path_factory.mktemp(name)
        model.save_pretrained(directories[name])
        assert json.loads((directories[name] / "config.json").read_text())["model_type"] == name
    return directories, models


def copy_of_export(tmp_path, exported, name="llama"):
    directory = tmp_path / name
    shutil.copytree(exported[0][name], directory)
    return directory


@pytest.fixture
def copy_of(tmp_path, exported):
    return copy_of_export(tmp_path, exported)


def tensor_shape(config):
    """The fields of the config that the tensors' shapes pin down."""
    return dict(vocab_size=config.vocab_size, hidden_size=config.d_model, num_hidden_layers=config.n_layers,
                kv_width=config.n_kv_heads * config.head_dim, intermediate_size=config.d_ff)


EXPECTED_TENSOR_SHAPE = dict(vocab_size=37, hidden_size=24, num_hidden_layers=2, kv_width=8, intermediate_size=20)


def assert_refused(directory, match):
    """test_hostile_hf's assert_refused (a ValueError naming the directory, no model of another shape built) for
    these exports' shape."""
    return hostile_hf.assert_refused(directory, match=match, shape_of=tensor_shape,
                                     expected_shape=EXPECTED_TENSOR_SHAPE)


def test_the_unedited_exports_load(exported):
    for name, directory in exported[0].items():
        assert_same_parameters(TransformerLM.from_pretrained(directory), exported[1][name])


# ----------------------------------------------------------------------------------------------------------
# Options that change the computation


@pytest.mark.parametrize("rope_type", ["llama3", "linear", "dynamic", "yarn", "longrope", None, 3])
def test_rope_types_other_than_default_are_refused(copy_of, rope_type):
    edit_config(copy_of, rope_parameters={"rope_type": rope_type, "rope_theta": 5e5, "factor": 8.0})
    assert_refused(copy_of, f"rope_parameters has rope_type={rope_type!r}.*not supported")


@pytest.mark.parametrize("rope_scaling, match", [
    ({"type": "linear", "factor": 2.0}, "rope_scaling has rope_type='linear'"),
    ({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192},
     "rope_scaling has rope_type='llama3'"),
    ({"rope_type": "yarn", "factor": 4.0}, "rope_scaling has rope_type='yarn'"),
    ({"type": "default", "factor": 2.0}, "rope_scaling holds 'factor'"),
    ("linear", "rope_scaling must be an object"),
], ids=["linear", "llama3", "yarn", "default-with-factor", "string"])
def test_old_layout_rope_scaling_is_refused(copy_of, rope_scaling, match):
    edit_config(copy_of, rope_parameters=..., rope_theta=10000.0, rope_scaling=rope_scaling)
    assert_refused(copy_of, match)


def test_old_layout_with_null_rope_scaling_loads_its_rope_theta(copy_of):
    edit_config(copy_of, rope_parameters=..., rope_theta=321.0, rope_scaling=None)
    assert TransformerLM.from_pretrained(copy_of).config.rope_theta == 321.0
    edit_config(copy_of, rope_theta=...)  # neither layout: transformers' default
    assert TransformerLM.from_pretrained(copy_of).config.rope_theta == 10000.0


@pytest.mark.parametrize("changes", [
    dict(partial_rotary_factor=0.5),
    dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.25}),
], ids=["top-level", "in-rope_parameters"])
def test_partial_rotary_factor_is_refused(copy_of, changes):
    edit_config(copy_of, **changes)
    assert_refused(copy_of, "partial_rotary_factor=0.5|partial_rotary_factor=0.25")


@pytest.mark.parametrize("field, value, match", [
    ("hidden_act", "gelu", "hidden_act='gelu'"),
    ("hidden_act", "relu", "hidden_act='relu'"),
    ("architectures", ["LlamaForSequenceClassification"], "architectures"),
    ("architectures", ["MistralForCausalLM"], "architectures"),
    ("architectures", "LlamaForCausalLM", "architectures"),
    ("model_type", "falcon", "model_type 'falcon'"),
    ("model_type", None, "model_type None"),
    ("model_type", ..., "model_type None"),
    ("quantization_config", {"quant_method": "gptq", "bits": 4}, "quantization_config"),
    ("attention_bias", True, "attention_bias=True with mlp_bias=False"),
    ("mlp_bias", True, "attention_bias=False with mlp_bias=True"),
    ("attention_bias", "false", "attention_bias must be true or false"),
    ("rope_parameters", [10000.0], "rope_parameters must be an object"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": "1e4"}, "rope_theta"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": -1.0}, "rope_theta"),
    ("rope_parameters", {"full_attention": {"rope_type": "default"}}, "rope_parameters holds 'full_attention'"),
], ids=lambda value: repr(value)[:30])
def test_options_this_model_cannot_follow_are_refused(copy_of, field, value, match):
    edit_config(copy_of, **{field: value})
    assert_refused(copy_of, match)


@pytest.mark.parametrize("field, value, match", [
    ("num_attention_heads", 5, "must divide n_heads.*num_attention_heads"),
    ("num_attention_heads", 4, r"q_proj.weight' has shape \(24, 24\), but the config needs \(16, 24\)"),
    ("num_key_value_heads", 4, "n_kv_heads.*must divide n_heads.*num_key_value_heads"),
    ("num_key_value_heads", 0, "n_kv_heads must be a positive integer.*num_key_value_heads"),
    ("head_dim", 3, "head_dim must be even"),
    ("head_dim", 8, "q_proj.weight' has shape"),  # a head width the tensors do not have
    ("num_hidden_layers", 3, "num_hidden_layers=3"),
    ("hidden_size", ..., "lacks the field 'hidden_size'"),
    ("vocab_size", "37", "vocab_size"),
    ("rms_norm_eps", None, "layer_norm_eps.*rms_norm_eps"),
    ("tie_word_embeddings", "no", "tie_word_embeddings"),
    ("attention_dropout", 1.5, "dropout.*attention_dropout"),
    ("intermediate_size", 21, "up_proj.weight' has shape"),
], ids=lambda value: repr(value)[:30])
def test_shapes_and_values_that_do_not_fit_are_refused(copy_of, field, value, match):
    edit_config(copy_of, **{field: value})
    assert_refused(copy_of, match)


@pytest.mark.parametrize("field, value", [
    ("vocab_size", 10**11), ("hidden_size", 3 * 10**8), ("num_hidden_layers", 10**9), ("intermediate_size", 10**12),
    ("vocab_size", 1e11), ("max_position_embeddings", 10**12), ("num_key_value_heads", 2**60), ("head_dim", 2**61),
], ids=lambda value: repr(value)[:20])
def test_huge_declared_sizes_are_refused_before_allocating(copy_of, field, value):
    edit_config(copy_of, **{field: value})
    tracemalloc.start()
    try:
        if field == "max_position_embeddings":  # no tensor depends on it under RoPE: a long context is allowed
            assert TransformerLM.from_pretrained(copy_of).config.max_seq_len == value
        else:
            assert_refused(copy_of, f"{field}|has shape")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # the model itself is some 40 kB


@pytest.mark.parametrize("content", [[1, 2], "llama", 5, None], ids=["list", "string", "number", "null"])
def test_config_that_is_not_a_json_object_is_refused(copy_of, content):
    (copy_of / "config.json").write_text(json.dumps(content))
    assert_refused(copy_of, "expected a JSON object")


# ----------------------------------------------------------------------------------------------------------
# Sliding windows


def test_mistral_sliding_window_absent_means_transformers_default(tmp_path, exported):
    """MistralConfig's default window is 4096, so a config.json without the field has one; null means none."""
    directory = copy_of_export(tmp_path, exported, "mistral")
    edit_config(directory, sliding_window=...)
    assert (TransformerLM.from_pretrained(directory).config.window) == 4096
    edit_config(directory, sliding_window=None)
    assert TransformerLM.from_pretrained(directory).config.attention == "full"


@pytest.mark.parametrize("changes, match", [
    (dict(sliding_window=0), "window must be a positive integer.*sliding_window"),
    (dict(sliding_window="4"), "window must be a positive integer.*sliding_window"),
], ids=["zero", "string"])
def test_mistral_window_that_is_not_a_positive_integer_is_refused(tmp_path, exported, changes, match):
    directory = copy_of_export(tmp_path, exported, "mistral")
    edit_config(directory, **changes)
    assert_refused(directory, match)


@pytest.mark.parametrize("changes, match", [
    (dict(use_sliding_window=True, sliding_window=4, max_window_layers=1), "max_window_layers=1"),
    (dict(use_sliding_window=True, layer_types=["full_attention", "sliding_attention"]), "layer_types mixes"),
    (dict(use_sliding_window=False, layer_types=["sliding_attention"] * 2), "use_sliding_window is false"),
    (dict(layer_types=["sliding_attention"]), "layer_types lists 1 layers"),
    (dict(layer_types=["chunked_attention"] * 2), "layer_types must be a list"),
    (dict(use_sliding_window="yes"), "use_sliding_window must be true or false"),
    (dict(use_sliding_window=True, sliding_window=4, max_window_layers=None), "max_window_layers must be an integer"),
], ids=["window-on-some-layers", "mixed-layer-types", "sliding-without-window", "short-layer-types",
        "unknown-layer-type", "string-flag", "null-max_window_layers"])
def test_qwen2_windows_that_differ_between_layers_are_refused(tmp_path, exported, changes, match):
    directory = copy_of_export(tmp_path, exported, "qwen2")
    edit_config(directory, **changes)
    assert_refused(directory, match)


@pytest.mark.parametrize("changes, window", [
    (dict(use_sliding_window=True, sliding_window=6, max_window_layers=0, layer_types=...), 6),
    (dict(use_sliding_window=True, sliding_window=6, max_window_layers=2, layer_types=...), None),
    (dict(use_sliding_window=True, sliding_window=6, layer_types=["sliding_attention"] * 2), 6),
    (dict(use_sliding_window=False, sliding_window=6, max_window_layers=0, layer_types=...), None),
], ids=["every-layer", "no-layer", "layer_types", "switched-off"])
def test_qwen2_window_on_every_layer_or_none_loads(tmp_path, exported, changes, window):
    directory = copy_of_export(tmp_path, exported, "qwen2")
    edit_config(directory, **changes)
    config = TransformerLM.from_pretrained(directory).config
    assert (config.window, config.attention) == (window, "full" if window is None else "sliding")


# ----------------------------------------------------------------------------------------------------------
# Tensors


@pytest.mark.parametrize("edit, match", [
    (lambda tensors: tensors.pop("model.layers.1.mlp.up_proj.weight"), "missing tensor 'model.layers.1.mlp.up_proj"),
    (lambda tensors: tensors.pop("lm_head.weight"), "missing tensor 'lm_head.weight'"),
    (replace_tensor("model.layers.2.input_layernorm.weight", np.ones(24, np.float32)),
     "unexpected tensor 'model.layers.2.input_layernorm.weight'"),
    (replace_tensor("model.layers.0.self_attn.q_proj.bias", np.ones(24, np.float32)),
     "unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"),
    (replace_tensor("model.layers.0.self_attn.k_proj.weight", np.ones((24, 8), np.float32)),
     r"'model.layers.0.self_attn.k_proj.weight' has shape \(24, 8\), but the config needs \(8, 24\)"),
    (replace_tensor("model.norm.weight", np.ones(24, np.int32)), "'model.norm.weight' has dtype I32"),
    (replace_tensor("model.rotary_emb.freqs", np.ones(2, np.float32)), "unexpected tensor 'model.rotary_emb.freqs'"),
], ids=["missing", "missing-head", "extra-layer", "bias-llama-lacks", "transposed", "integer", "unknown-buffer"])
def test_tensors_that_do_not_fit_the_config_are_refused(copy_of, edit, match):
    edit_tensors(copy_of, edit)
    assert_refused(copy_of, match)


def test_rope_buffers_of_old_checkpoints_are_skipped(copy_of, exported):
    """Older transformers stored each layer's RoPE frequencies; like transformers, the loader skips them."""
    edit_tensors(copy_of, lambda tensors: tensors.update({
        f"model.layers.{layer}.self_attn.rotary_emb.inv_freq": np.ones(2, np.float32) for layer in range(2)}))
    assert_same_parameters(TransformerLM.from_pretrained(copy_of), exported[1]["llama"])


def test_a_tied_head_stored_anyway_must_copy_the_embedding(copy_of):
    edit_config(copy_of, tie_word_embeddings=True)
    with pytest.raises(ValueError, match="lm_head.weight differs from model.embed_tokens.weight"):
        TransformerLM.from_pretrained(copy_of)
    edit_tensors(copy_of, lambda tensors: tensors.update(
        {"lm_head.weight": tensors["model.embed_tokens.weight"].copy()}))
    assert "lm_head.weight" not in TransformerLM.from_pretrained(copy_of).parameters()


def test_sharded_directory_with_a_shard_missing_a_tensor_is_refused(copy_of):
    tensors = dict(load_file(copy_of / "model.safetensors", mmap=False))
    (copy_of / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, shard_names in shards.items():
        save_file({name: tensors[name] for name in shard_names}, copy_of / shard, metadata={"format": "pt"})
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    index = {"metadata": {}, "weight_map": weight_map}
    (copy_of / "model.safetensors.index.json").write_text(json.dumps(index))
    assert TransformerLM.from_pretrained(copy_of).config.n_layers == 2

    weight_map["model.norm.weight"] = "model-00002-of-00002.safetensors"  # the wrong shard
    (copy_of / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="model.norm.weight"):
        TransformerLM.from_pretrained(copy_of)


# ----------------------------------------------------------------------------------------------------------
# Any mutation: the same model, or a refusal that names the directory


CONFIG_FIELDS = ["vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                 "head_dim", "intermediate_size", "rms_norm_eps", "tie_word_embeddings", "hidden_act", "model_type",
                 "rope_parameters", "rope_theta", "rope_scaling", "attention_bias", "mlp_bias", "sliding_window",
                 "architectures", "attention_dropout", "partial_rotary_factor"]
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.sampled_from([0, 1, 2, 3, 4, 6, 8, 24, 37, 10**12]),
    st.floats(allow_nan=True, allow_infinity=False), st.text(max_size=4),
    st.lists(st.integers(0, 40), max_size=2), st.dictionaries(st.sampled_from(["rope_type", "rope_theta", "type"]),
                                                              st.sampled_from(["default", "linear", 1.0, 500]),
                                                              max_size=2),
)


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(CONFIG_FIELDS), JSON_VALUES, min_size=1, max_size=3))
def test_mutated_config_loads_the_same_weights_or_is_refused_by_name(exported, changes):
    directory, model = exported[0]["llama"], exported[1]["llama"]
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / "model"
        shutil.copytree(directory, copy)
        edit_config(copy, **changes)
        ConfigRecordingLM.built.clear()
        try:
            loaded = ConfigRecordingLM.from_pretrained(copy)
        except ValueError as error:
            assert str(copy) in str(error)
        else:
            assert_same_parameters(loaded, model)
            assert loaded.config.positional == "rope" and loaded.config.activation == "swiglu"
        assert all(tensor_shape(config) == EXPECTED_TENSOR_SHAPE for config in ConfigRecordingLM.built)

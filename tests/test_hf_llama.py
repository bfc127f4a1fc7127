"""Hugging Face Llama, Mistral and Qwen2 checkpoints (hf_llama.py), and generate.py --hf-model on them.

The oracle is transformers itself, built offline from small random configs with odd sizes (hidden 48, 6 query
heads, 1, 2, 3 or 6 key/value heads, a head_dim set apart, vocabulary 97): checkpoints it writes must load here
with the same logits and the same greedy tokens through the KV cache, and checkpoints written here must load
there without missing or unexpected keys and with the same logits. Every parameter, RMSNorm gains and biases
included, is drawn at random, so a tensor mapped to the wrong place (or a RoPE in the wrong layout) shows.
"""
import dataclasses
import json

import numpy as np
import pytest
from conftest import require_oracle
from test_hf_gpt2 import hf_logits
from test_hostile_hf import assert_same_parameters

import generate
import hf_llama
from safetensors_io import load_file
from tokenizer import HFTokenizer
from transformer_lm import TransformerConfig, TransformerLM

SIZES = dict(hidden_size=48, num_attention_heads=6, intermediate_size=40, vocab_size=97, num_hidden_layers=2,
             max_position_embeddings=64)
# Each case: (model_type, the config's fields besides SIZES). No bos/eos ids, so that generation never stops early.
HF_CASES = {
    "llama-gqa": ("llama", dict(num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
                                rms_norm_eps=1e-5)),
    "llama-head_dim-biases-tied": ("llama", dict(num_key_value_heads=3, head_dim=10, attention_bias=True,
                                                 mlp_bias=True, tie_word_embeddings=True)),
    "llama-mha": ("llama", dict(num_key_value_heads=6, rope_parameters={"rope_type": "default", "rope_theta": 500.0})),
    "mistral-mqa-window": ("mistral", dict(num_key_value_heads=1, sliding_window=5)),
    "mistral-full": ("mistral", dict(num_key_value_heads=2, sliding_window=None, tie_word_embeddings=True)),
    "qwen2-tied": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True,
                                 rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "qwen2-window": ("qwen2", dict(num_key_value_heads=3, use_sliding_window=True, sliding_window=4,
                                   max_window_layers=0)),
}
NEW_TOKENS = 20
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def oracle():
    """(transformers, torch), or a skip when they are not installed."""
    return require_oracle("transformers"), require_oracle("torch")


def random_hf_model(oracle, case, seed=0, **overrides):
    """transformers' model of HF_CASES[case] in eval mode, every parameter drawn from N(0, 0.5^2)."""
    transformers, torch = oracle
    model_type, fields = HF_CASES[case]
    config_class = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                    "qwen2": transformers.Qwen2Config}[model_type]
    config = config_class(**{**SIZES, **fields, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
                             **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    size = sum(parameter.numel() for parameter in model.parameters())
    torch.nn.utils.vector_to_parameters(0.5 * torch.randn(size), model.parameters())
    return model


def hf_greedy(oracle, model, prompt):
    _, torch = oracle
    with torch.no_grad():
        return model.generate(torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                              do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0).numpy()


def random_ids(shape, seed=0, vocab_size=SIZES["vocab_size"]):
    return np.random.default_rng(seed).integers(0, vocab_size, shape)


def assert_logits_close(case, ours, theirs):
    difference = float(np.abs(ours - theirs).max())
    assert difference <= TOLERANCE, f"{case}: max |logit difference| {difference:.2e}"


def random_model(seed=0, **overrides):
    """Our model with the three architectures' fixed choices, every parameter drawn from N(0, 0.5^2)."""
    fields = dict(vocab_size=97, d_model=48, n_heads=6, n_kv_heads=2, n_layers=2, d_ff=40, max_seq_len=64,
                  dropout=0.0, positional="rope", norm="rmsnorm", activation="swiglu", norm_first=True, bias=False,
                  rope_theta=2000.0, layer_norm_eps=1e-5, init="gpt2")
    model = TransformerLM(TransformerConfig(**{**fields, **overrides}), seed=seed)
    rng = np.random.default_rng(seed)
    for value in model.parameters().values():
        value[...] = rng.normal(0.0, 0.5, value.shape)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------
# transformers -> here


@pytest.mark.parametrize("case", HF_CASES)
def test_load_matches_transformers_logits_and_greedy_tokens(oracle, case, tmp_path):
    hf_model = random_hf_model(oracle, case)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    model = TransformerLM.from_pretrained(tmp_path)

    assert model.config.dtype == "float32" and not model.training and model.tokenizer is None
    assert model.config.n_kv_heads == hf_model.config.num_key_value_heads
    assert model.config.head_dim == (10 if "head_dim" in case else 8)
    ids = random_ids((2, 16))  # longer than every sliding window
    assert_logits_close(case, model(ids), hf_logits(oracle, hf_model, ids))

    prompt = random_ids((2, 5), seed=1)
    expected = hf_greedy(oracle, hf_model, prompt)
    assert expected.shape == (2, 5 + NEW_TOKENS)
    np.testing.assert_array_equal(model.generate(prompt, NEW_TOKENS, temperature=0), expected)


@pytest.mark.parametrize("case, attention, window", [
    ("mistral-mqa-window", "sliding", 5), ("mistral-full", "full", None), ("qwen2-window", "sliding", 4),
    ("qwen2-tied", "full", None), ("llama-gqa", "full", None),
])
def test_sliding_window_maps_onto_the_sliding_pattern(oracle, case, attention, window, tmp_path):
    random_hf_model(oracle, case).save_pretrained(tmp_path)
    config = TransformerLM.from_pretrained(tmp_path).config
    assert (config.attention, config.window) == (attention, window)


def test_qwen2_sliding_window_on_no_layer_is_full_attention(oracle, tmp_path):
    """Published Qwen2 configs carry a sliding_window, but with use_sliding_window false (or max_window_layers
    at least the layer count) no layer uses it."""
    hf_model = random_hf_model(oracle, "qwen2-window", max_window_layers=2)
    hf_model.save_pretrained(tmp_path)
    model = TransformerLM.from_pretrained(tmp_path)
    assert model.config.attention == "full"
    ids = random_ids((1, 16))
    assert_logits_close("qwen2-max_window_layers", model(ids), hf_logits(oracle, hf_model, ids))


@pytest.mark.parametrize("case", ["llama-gqa", "qwen2-tied"])
def test_old_config_layout_with_top_level_rope_theta_loads(oracle, case, tmp_path):
    """Most published checkpoints: rope_theta at the top level beside rope_scaling null (transformers 4.x)."""
    hf_model = random_hf_model(oracle, case)
    hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    rope_theta = config.pop("rope_parameters")["rope_theta"]
    config.update(rope_theta=rope_theta, rope_scaling=None, torch_dtype="float32")
    (tmp_path / "config.json").write_text(json.dumps(config))

    model = TransformerLM.from_pretrained(tmp_path)
    assert model.config.rope_theta == rope_theta != 10000.0
    ids = random_ids((2, 16))
    assert_logits_close(f"{case}-old-layout", model(ids), hf_logits(oracle, hf_model, ids))


def test_sharded_checkpoint_loads(oracle, tmp_path):
    hf_model = random_hf_model(oracle, "llama-head_dim-biases-tied")
    hf_model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "model.safetensors.index.json").exists()
    ids = random_ids((1, 16))
    assert_logits_close("llama-sharded", TransformerLM.from_pretrained(tmp_path)(ids),
                        hf_logits(oracle, hf_model, ids))


@pytest.mark.parametrize("torch_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_half_precision_checkpoints_load_widened(oracle, torch_dtype, dtype, tmp_path):
    """A bf16 or f16 checkpoint loads into a float32 or float64 model whose parameters are exactly those of the
    same checkpoint widened to float32 by torch."""
    _, torch = oracle
    half = random_hf_model(oracle, "llama-gqa").to(getattr(torch, torch_dtype))
    half.save_pretrained(tmp_path / "half")
    assert {value.dtype for value in load_file(tmp_path / "half" / "model.safetensors").values()} == {
        np.dtype(np.float32) if torch_dtype == "bfloat16" else np.dtype(np.float16)}  # BF16 decodes to float32
    half.to(torch.float32).save_pretrained(tmp_path / "widened")

    model = TransformerLM.from_pretrained(tmp_path / "half", dtype=dtype)
    widened = TransformerLM.from_pretrained(tmp_path / "widened")
    assert model.config == dataclasses.replace(widened.config, dtype=dtype)
    for name, value in widened.parameters().items():
        assert model.parameters()[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(model.parameters()[name], value, err_msg=name)


# ----------------------------------------------------------------------------------------------------------
# here -> transformers


SAVE_CASES = {
    "llama-no-bias": (dict(), "LlamaForCausalLM"),
    "llama-biases-untied-mha": (dict(bias=True, tie_weights=False, n_kv_heads=6), "LlamaForCausalLM"),
    "llama-head_dim-mqa": (dict(head_dim=10, n_kv_heads=1, tie_weights=False), "LlamaForCausalLM"),
    "qwen2-qkv-bias": (dict(qkv_bias=True, n_kv_heads=3), "Qwen2ForCausalLM"),
    "qwen2-qkv-bias-window": (dict(qkv_bias=True, attention="sliding", window=4), "Qwen2ForCausalLM"),
    "mistral-window": (dict(attention="sliding", window=5, tie_weights=False), "MistralForCausalLM"),
    "llama-float64": (dict(dtype="float64", n_layers=1), "LlamaForCausalLM"),
}


@pytest.mark.parametrize("case", SAVE_CASES)
def test_save_loads_in_transformers_with_same_logits(oracle, case, tmp_path):
    transformers, _ = oracle
    overrides, architecture = SAVE_CASES[case]
    model = random_model(**overrides)
    model.save_pretrained(tmp_path)

    hf_model, loading_info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(hf_model).__name__ == architecture
    assert {key: list(value) for key, value in loading_info.items()} == dict(
        missing_keys=[], unexpected_keys=[], mismatched_keys=[], error_msgs=[])
    ids = random_ids((2, 16))
    assert_logits_close(f"save-{case}", model(ids), hf_logits(oracle, hf_model.eval(), ids))


def test_saved_file_layout(tmp_path):
    model = random_model(dtype="float64", tie_weights=False)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert all(value.dtype == np.float32 for value in tensors.values())
    # torch's (out, in) layout: the q, k and v projections of W_qkv's column blocks, transposed.
    assert tensors["model.layers.1.self_attn.q_proj.weight"].shape == (48, 48)
    assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (16, 48)
    assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (48, 40)
    np.testing.assert_array_equal(tensors["model.layers.0.self_attn.v_proj.weight"],
                                  model.parameters()["decoder.blocks.0.attention.W_qkv"][:, 64:].T.astype(np.float32))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 2000.0}
    assert (config["num_key_value_heads"], config["head_dim"], config["tie_word_embeddings"]) == (2, 8, False)


@pytest.mark.parametrize("overrides", [
    dict(), dict(bias=True, tie_weights=False, dropout=0.1), dict(qkv_bias=True, attention="sliding", window=3),
    dict(attention="sliding", window=7, head_dim=4, n_kv_heads=3, layer_norm_eps=1e-3),
], ids=["llama", "llama-biases", "qwen2-window", "mistral"])
def test_save_then_load_round_trips_exactly(overrides, tmp_path):
    model = random_model(**overrides)
    model.save_pretrained(tmp_path)
    loaded = TransformerLM.from_pretrained(tmp_path)
    assert loaded.config == model.config
    assert_same_parameters(loaded, model)


@pytest.mark.parametrize("overrides, message", [
    (dict(norm="layernorm"), "norm='layernorm' has no Llama, Mistral or Qwen2 equivalent.*; and positional='rope' "
                             "has no GPT-2 equivalent"),
    (dict(positional="learned", norm="layernorm", activation="gelu"), "^bias=False has no GPT-2 equivalent.*; and "
                                                                      "positional='learned' has no Llama"),
    (dict(bias=True, qkv_bias=False), "bias=True with qkv_bias=False has no Llama"),
    (dict(bias=True, attention="sliding", window=4), "bias=True with attention='sliding' has no Llama"),
    (dict(attention="strided", stride=3, n_kv_heads=6), "attention='strided' has no Llama"),
    (dict(adaptive_span=True, max_span=8), "adaptive_span=True has no Llama"),
    (dict(norm_first=False), "norm_first=False has no Llama"),
    (dict(head_dim=8, d_model=44), "d_model=44 not divisible by n_heads=6"),
], ids=["layernorm", "gpt2-ish", "bias-not-qkv", "sliding-with-biases", "strided", "adaptive-span", "post-norm",
        "d_model-not-divisible"])
def test_save_refuses_what_no_format_can_express(overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        random_model(**overrides).save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_parameter_has_its_own_tensors():
    config = random_model(tie_weights=False, bias=True).config
    names = [hf_name for name in config.parameter_shapes() for hf_name, _ in hf_llama.hf_parts(name, config)]
    assert len(set(names)) == len(names) == 2 + 1 + 2 * (2 + 4 * 2 + 3 * 2)


# ----------------------------------------------------------------------------------------------------------
# The tokenizer and generate.py


@pytest.fixture
def llama_with_tokenizer(tmp_path):
    """A small Llama directory saved with a tokenizer.json of the Llama 3 / SmolLM family (byte-level BPE after
    its own pre-tokenizers) that the tokenizers library trains."""
    tokenizers = require_oracle("tokenizers")
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["Hello world, the cat sat on the mat 12 times. " * 50], trainer)
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    model = random_model(vocab_size=tokenizer.get_vocab_size(), d_model=16, n_heads=2, n_kv_heads=1, d_ff=24)
    model.tokenizer = HFTokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    model.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama", tokenizer


def test_tokenizer_json_is_saved_and_attached(llama_with_tokenizer):
    directory, oracle_tokenizer = llama_with_tokenizer
    model = TransformerLM.from_pretrained(directory)
    assert isinstance(model.tokenizer, HFTokenizer)
    assert model.tokenizer.encode("Hello the mat 2026") == oracle_tokenizer.encode("Hello the mat 2026").ids
    config = json.loads((directory / "config.json").read_text())
    assert config["eos_token_id"] == oracle_tokenizer.token_to_id("<|endoftext|>") and config["bos_token_id"] is None


def test_generate_cli_runs_a_llama_directory(llama_with_tokenizer, capsys):
    directory, _ = llama_with_tokenizer
    generate.main(["--hf-model", str(directory), "--prompt", "Hello the", "--max-new-tokens", "12",
                   "--temperature", "0"])
    output = capsys.readouterr().out

    model = TransformerLM.from_pretrained(directory)
    prompt_ids = model.tokenizer.encode("Hello the")
    tokens = model.generate(np.array(prompt_ids), 12, temperature=0)
    assert output == model.tokenizer.decode(list(tokens)) + "\n"


def test_generate_cli_refuses_an_unsupported_rope_in_one_line(llama_with_tokenizer):
    directory, _ = llama_with_tokenizer
    config = json.loads((directory / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="error: cannot load the model: .*rope_type='llama3'") as raised:
        generate.main(["--hf-model", str(directory), "--prompt", "Hello"])
    assert "\n" not in str(raised.value.code)


"""Hugging Face GPT-2 checkpoints (hf_gpt2.py) and the export CLI (convert.py).

The oracle is transformers' own GPT2LMHeadModel, built offline from random configs: checkpoints it writes
must load here with the same logits and the same greedy tokens, and checkpoints written here must load
there without missing or unexpected keys and with the same logits. Every parameter, LayerNorm gains and
biases included, is drawn at random, so a tensor mapped to the wrong place changes the logits.
"""
import json
import pickle
import shutil

import numpy as np
import pytest
from conftest import random_gpt2_model, require_gpt2_tokenizer, require_oracle

import convert
import hf_gpt2
from checkpoint import save_checkpoint, seal
from safetensors_io import SafetensorsError, load_file, read_metadata, save_file
from tokenizer import ByteBPETokenizer, CharTokenizer
from transformer_lm import TransformerLM

# Odd sizes, so that a transposed or misplaced tensor cannot keep its shape by accident.
GPT2_CONFIGS = [
    dict(n_embd=12, n_head=3, n_layer=2, vocab_size=37, n_positions=29),
    dict(n_embd=20, n_head=5, n_layer=1, vocab_size=53, n_positions=31, activation_function="gelu"),
    dict(n_embd=16, n_head=2, n_layer=3, vocab_size=41, n_positions=27, n_inner=24, layer_norm_epsilon=1e-3,
         activation_function="gelu_pytorch_tanh", resid_pdrop=0.0),
    dict(n_embd=8, n_head=4, n_layer=2, vocab_size=29, n_positions=26, tie_word_embeddings=False),
]
CONFIG_IDS = ["tiny", "exact-gelu", "n_inner", "untied"]
NEW_TOKENS = 20
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def oracle():
    """(transformers, torch), or a skip when they are not installed."""
    return require_oracle("transformers"), require_oracle("torch")


def random_hf_model(oracle, seed=0, **config):
    """A GPT2LMHeadModel in eval mode with every parameter drawn from N(0, 0.5^2)."""
    transformers, torch = oracle
    torch.manual_seed(seed)
    # No bos/eos: GPT-2's default 50256 lies outside these small vocabularies, and an end-of-text token
    # would let transformers stop generating early.
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(bos_token_id=None, eos_token_id=None, **config))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    return model.eval()


def hf_logits(oracle, model, ids):
    _, torch = oracle
    with torch.no_grad():
        return model(torch.from_numpy(ids)).logits.numpy()


def random_ids(vocab_size, shape, seed=0):
    return np.random.default_rng(seed).integers(0, vocab_size, shape)


random_model = random_gpt2_model


# ----------------------------------------------------------------------------------------------------------
# transformers -> here


@pytest.mark.parametrize("gpt2_config", GPT2_CONFIGS, ids=CONFIG_IDS)
def test_load_matches_transformers_logits_and_greedy_tokens(oracle, gpt2_config, tmp_path):
    _, torch = oracle
    hf_model = random_hf_model(oracle, **gpt2_config)
    hf_model.save_pretrained(tmp_path, safe_serialization=True)
    model = TransformerLM.from_pretrained(tmp_path)

    assert model.config.dtype == "float32" and not model.training and model.tokenizer is None
    ids = random_ids(gpt2_config["vocab_size"], (2, gpt2_config["n_positions"]))  # every position embedding
    np.testing.assert_allclose(model(ids), hf_logits(oracle, hf_model, ids), rtol=0, atol=TOLERANCE)

    prompt = random_ids(gpt2_config["vocab_size"], (2, 5), seed=1)
    with torch.no_grad():
        expected = hf_model.generate(torch.from_numpy(prompt), attention_mask=torch.ones(prompt.shape, dtype=int),
                                     do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=0).numpy()
    assert expected.shape == (2, 5 + NEW_TOKENS)
    np.testing.assert_array_equal(model.generate(prompt, NEW_TOKENS, temperature=0), expected)


def test_dropout_rate_comes_from_resid_pdrop(oracle, tmp_path):
    random_hf_model(oracle, **GPT2_CONFIGS[0], resid_pdrop=0.25, embd_pdrop=0.0).save_pretrained(tmp_path)
    assert TransformerLM.from_pretrained(tmp_path).config.dropout == 0.25


def test_old_layout_without_prefix_and_with_mask_buffers_loads(oracle, tmp_path):
    """The original GPT-2 files: no "transformer." prefix, and each layer's causal mask stored as
    h.N.attn.bias (1, 1, n_positions, n_positions) and h.N.attn.masked_bias (a scalar)."""
    gpt2_config = GPT2_CONFIGS[0]
    hf_model = random_hf_model(oracle, **gpt2_config)
    hf_model.save_pretrained(tmp_path)
    positions = gpt2_config["n_positions"]
    tensors = {name.removeprefix("transformer."): value.numpy() for name, value in hf_model.state_dict().items()
               if name != "lm_head.weight"}
    for layer in range(gpt2_config["n_layer"]):
        tensors[f"h.{layer}.attn.bias"] = np.tril(np.ones((positions, positions), dtype=np.uint8))[None, None]
        tensors[f"h.{layer}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    assert not any(name.startswith("transformer.") for name in load_file(tmp_path / "model.safetensors"))

    ids = random_ids(gpt2_config["vocab_size"], (2, positions))
    np.testing.assert_allclose(TransformerLM.from_pretrained(tmp_path)(ids), hf_logits(oracle, hf_model, ids),
                               rtol=0, atol=TOLERANCE)


def test_sharded_checkpoint_loads(oracle, tmp_path):
    gpt2_config = GPT2_CONFIGS[2]
    hf_model = random_hf_model(oracle, **gpt2_config)
    hf_model.save_pretrained(tmp_path, max_shard_size="4KB")
    assert not (tmp_path / "model.safetensors").exists() and (tmp_path / "model.safetensors.index.json").exists()
    ids = random_ids(gpt2_config["vocab_size"], (1, 9))
    np.testing.assert_allclose(TransformerLM.from_pretrained(tmp_path)(ids), hf_logits(oracle, hf_model, ids),
                               rtol=0, atol=TOLERANCE)


# ----------------------------------------------------------------------------------------------------------
# here -> transformers


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(tie_weights=False, activation="gelu", d_ff=20, layer_norm_eps=1e-3),
    dict(dtype="float64", n_layers=1),
], ids=["gpt2-style", "untied-exact-gelu", "float64"])
def test_save_loads_in_transformers_with_same_logits(oracle, overrides, tmp_path):
    transformers, _ = oracle
    model = random_model(**overrides)
    model.save_pretrained(tmp_path)

    hf_model, loading_info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert {key: list(value) for key, value in loading_info.items()} == dict(
        missing_keys=[], unexpected_keys=[], mismatched_keys=[], error_msgs=[])
    ids = random_ids(model.config.vocab_size, (2, model.config.max_seq_len))
    np.testing.assert_allclose(hf_logits(oracle, hf_model.eval(), ids), model(ids), rtol=0, atol=TOLERANCE)


def test_saved_file_layout(tmp_path):
    model = random_model(dtype="float64")
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert read_metadata(tmp_path / "model.safetensors") == {"format": "pt"}
    assert "lm_head.weight" not in tensors and all(name.startswith("transformer.") for name in tensors)
    assert all(value.dtype == np.float32 for value in tensors.values())
    assert tensors["transformer.h.1.attn.c_attn.weight"].shape == (12, 36)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_embd"], config["n_head"], config["n_layer"], config["n_positions"]) == (12, 3, 2, 23)
    assert config["bos_token_id"] is None and config["tie_word_embeddings"] is True


def test_save_then_load_round_trips_exactly(tmp_path):
    model = random_model(tie_weights=False, activation="gelu", d_ff=7, layer_norm_eps=1e-4, dropout=0.1)
    model.save_pretrained(tmp_path)
    loaded = TransformerLM.from_pretrained(tmp_path)
    assert loaded.config == model.config
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[name], value, err_msg=name)


@pytest.mark.parametrize("overrides, setting", [
    (dict(norm_first=False), "norm_first=False"),
    (dict(positional="sinusoidal"), "positional='sinusoidal'"),
    (dict(attention="sliding", window=4), "attention='sliding'"),
    (dict(adaptive_span=True, max_span=8), "adaptive_span=True"),
    (dict(norm="rmsnorm"), "norm='rmsnorm' has no GPT-2 equivalent"),
    (dict(activation="swiglu"), "activation='swiglu' has no GPT-2 equivalent"),
    (dict(bias=False), "bias=False has no GPT-2 equivalent"),
    (dict(qkv_bias=False), "qkv_bias=False has no GPT-2 equivalent"),
    (dict(n_kv_heads=1), "n_kv_heads=1, head_dim=4 has no GPT-2 equivalent"),
    (dict(head_dim=6), "n_kv_heads=3, head_dim=6 has no GPT-2 equivalent"),
], ids=["post-LN", "sinusoidal", "sliding-window", "adaptive-span", "rmsnorm", "swiglu", "no-bias", "no-qkv-bias",
        "grouped-query", "head-dim"])
def test_save_refuses_architectures_gpt2_cannot_express(overrides, setting, tmp_path):
    with pytest.raises(ValueError, match=setting):
        random_model(**overrides).save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# Refusals when loading


@pytest.fixture
def saved_dir(tmp_path):
    """A directory holding a small GPT-2-style model (tied, two layers) written by save_pretrained."""
    random_model().save_pretrained(tmp_path)
    return tmp_path


def edit_config(directory, **changes):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps({name: value for name, value in config.items() if value is not ...}))


def edit_tensors(directory, edit):
    path = directory / "model.safetensors"
    tensors = dict(load_file(path, mmap=False))
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("field, value, message", [
    ("scale_attn_weights", False, "scale_attn_weights"),
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx"),
    ("reorder_and_upcast_attn", True, "reorder_and_upcast_attn"),
    ("add_cross_attention", True, "add_cross_attention"),
    ("model_type", "gpt_neo", "model_type"),
    ("activation_function", "relu", "activation_function"),
    ("n_embd", ..., "n_embd"),  # the field deleted
    ("n_head", 5, "divisible by n_heads"),
    ("tie_word_embeddings", "yes", "tie_weights"),
])
def test_load_refuses_unrepresentable_config(saved_dir, field, value, message):
    edit_config(saved_dir, **{field: value})
    with pytest.raises(ValueError, match=message):
        TransformerLM.from_pretrained(saved_dir)


def replace_tensor(name, value):
    def edit(tensors):
        tensors[name] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda tensors: tensors.pop("transformer.h.1.mlp.c_fc.bias"), "missing tensor 'h.1.mlp.c_fc.bias'"),
    (replace_tensor("transformer.h.2.ln_1.weight", np.ones(12, np.float32)), "unexpected tensor 'h.2.ln_1.weight'"),
    (replace_tensor("transformer.wpe.weight", np.ones((24, 12), np.float32)), r"'wpe.weight' has shape \(24, 12\)"),
    (replace_tensor("transformer.ln_f.bias", np.ones(12, np.int32)), "'ln_f.bias' has dtype int32"),
    (replace_tensor("wte.weight", np.ones((31, 12), np.float32)), "'wte.weight' is stored twice"),
    (replace_tensor("lm_head.weight", np.ones((31, 12), np.float32)), "lm_head.weight differs from wte.weight"),
], ids=["missing", "unexpected", "shape", "dtype", "duplicate", "tied-head-differs"])
def test_load_refuses_mismatched_tensors(saved_dir, edit, message):
    edit_tensors(saved_dir, edit)
    with pytest.raises(ValueError, match=message):
        TransformerLM.from_pretrained(saved_dir)


def test_tied_head_stored_as_a_copy_of_the_embedding_loads(saved_dir):
    edit_tensors(saved_dir, lambda tensors: tensors.update({"lm_head.weight": tensors["transformer.wte.weight"]}))
    model = TransformerLM.from_pretrained(saved_dir)
    assert "lm_head.weight" not in model.parameters()


def test_pickle_only_directory_is_refused_with_how_to_convert(saved_dir):
    (saved_dir / "model.safetensors").unlink()
    (saved_dir / "pytorch_model.bin").write_bytes(pickle.dumps({"wte.weight": [0.0]}))
    with pytest.raises(SafetensorsError, match="pickle.*safe_serialization=True"):
        TransformerLM.from_pretrained(saved_dir)


def test_directory_without_weights_is_refused(saved_dir):
    (saved_dir / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        TransformerLM.from_pretrained(saved_dir)


# ----------------------------------------------------------------------------------------------------------
# The tokenizer


@pytest.fixture
def gpt2_vocab_dir(tmp_path):
    """A narrow model with GPT-2's vocabulary, saved together with GPT-2's tokenizer files."""
    tokenizer_dir = require_gpt2_tokenizer()
    random_model(vocab_size=50257, d_model=4, n_heads=1, n_layers=1, max_seq_len=32).save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_dir / name, tmp_path / name)
    return tmp_path


def test_tokenizer_is_attached_and_saved_again(gpt2_vocab_dir, tmp_path):
    model = TransformerLM.from_pretrained(gpt2_vocab_dir)
    assert model.tokenizer.encode("Hello world") == [15496, 995]

    model.save_pretrained(tmp_path / "again")
    config = json.loads((tmp_path / "again" / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == 50256
    assert TransformerLM.from_pretrained(tmp_path / "again").tokenizer.encode("Hello world") == [15496, 995]


def test_tokenizer_json_alone_is_attached(gpt2_vocab_dir):
    """Current transformers saves GPT-2's tokenizer as tokenizer.json only."""
    vocab = json.loads((gpt2_vocab_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = (gpt2_vocab_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    tokenizer_json = {"model": {"type": "BPE", "vocab": vocab, "merges": [line.split(" ") for line in merges if line]},
                      "added_tokens": [{"id": 50256, "content": "<|endoftext|>", "special": True}]}
    (gpt2_vocab_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json), encoding="utf-8")
    (gpt2_vocab_dir / "vocab.json").unlink()
    (gpt2_vocab_dir / "merges.txt").unlink()
    assert TransformerLM.from_pretrained(gpt2_vocab_dir).tokenizer.encode("Hello world") == [15496, 995]


def test_tokenizer_larger_than_the_vocabulary_is_refused(saved_dir):
    tokenizer_dir = require_gpt2_tokenizer()
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_dir / name, saved_dir / name)
    with pytest.raises(ValueError, match="50257 tokens, more than the model's vocab_size 31"):
        TransformerLM.from_pretrained(saved_dir)


# ----------------------------------------------------------------------------------------------------------
# convert.py


def test_convert_exports_a_checkpoint(tmp_path, capsys):
    model = random_model(tie_weights=False)
    save_checkpoint(tmp_path / "run" / "checkpoint", model, tokenizer=CharTokenizer.from_text("abc"))
    convert.main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "hf"), "--check"])
    output = capsys.readouterr().out
    assert "exported" in output and f"parameters: {model.num_parameters():,}" in output
    assert "no byte-level BPE tokenizer" in output and not (tmp_path / "hf" / "vocab.json").exists()

    exported = TransformerLM.from_pretrained(tmp_path / "hf")
    ids = random_ids(model.config.vocab_size, (1, 10))
    np.testing.assert_array_equal(exported(ids), model(ids))


def test_convert_exports_a_byte_level_bpe_tokenizer(tmp_path, capsys):
    tokenizer = ByteBPETokenizer.train("the cat sat on the mat, the cat ate the rat. " * 20, vocab_size=270)
    save_checkpoint(tmp_path / "checkpoint", random_model(vocab_size=270), tokenizer=tokenizer)
    convert.main(["--checkpoint", str(tmp_path / "checkpoint"), "--out", str(tmp_path / "hf"), "--check"])
    # The prompt is cut to half of max_seq_len (23), leaving room for the continuation.
    assert "greedy continuation: \"Hello, I'm" in capsys.readouterr().out

    exported = TransformerLM.from_pretrained(tmp_path / "hf")
    assert exported.tokenizer.encode("the cat sat") == tokenizer.encode("the cat sat")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["eos_token_id"] == tokenizer.eot_token == 269


def test_convert_summarizes_a_hf_directory(gpt2_vocab_dir, capsys):
    convert.main(["--hf-model", str(gpt2_vocab_dir)])
    output = capsys.readouterr().out
    assert "vocab 50257" in output and "greedy continuation: \"Hello, I'm a language model," in output


def drop_final_norm_bias(directory):
    with np.load(directory / "model.npz") as archive:
        arrays = {name: archive[name] for name in archive.files if name != "decoder.final_norm.bias"}
    np.savez(directory / "model.npz", **arrays)
    seal(directory, 2)  # a consistent manifest, else its checksum catches the edit before the tensor check


@pytest.mark.parametrize("damage, message", [
    (None, "error: no checkpoint in"),
    (drop_final_norm_bias, r"error: .*missing tensors \['decoder.final_norm.bias'\]"),
], ids=["no-checkpoint", "missing-tensor"])
def test_convert_errors_are_one_line(tmp_path, damage, message):
    if damage is not None:
        save_checkpoint(tmp_path / "checkpoint", random_model())
        damage(tmp_path / "checkpoint")
    with pytest.raises(SystemExit, match=message) as raised:
        convert.main(["--checkpoint", str(tmp_path / "checkpoint"), "--out", str(tmp_path / "hf")])
    assert "\n" not in str(raised.value.code)


def test_convert_refuses_a_post_ln_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "checkpoint", random_model(norm_first=False))
    with pytest.raises(SystemExit, match="error: norm_first=False"):
        convert.main(["--checkpoint", str(tmp_path / "checkpoint"), "--out", str(tmp_path / "hf")])
    assert not (tmp_path / "hf").exists()


def test_convert_needs_out_with_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        convert.main(["--checkpoint", str(tmp_path)])
    assert raised.value.code == 2 and "--out" in capsys.readouterr().err


def test_gpt2_names_cover_every_parameter_once():
    names = [hf_gpt2.gpt2_name(name) for name in random_model(tie_weights=False).parameters()]
    assert len(set(names)) == len(names) == 4 + 1 + 2 * 12

"""Hugging Face Llama, Mistral and Qwen2 checkpoints: read one for a TransformerLM, and save a TransformerLM as one.

    model = TransformerLM.from_pretrained("SmolLM2-135M")   # config.json + model.safetensors (+ tokenizer.json)
    model.save_pretrained("out-dir")                         # transformers.AutoModelForCausalLM reads it

TransformerLM.from_pretrained and save_pretrained pick this module or hf_gpt2 (by config.json's model_type, and by
the model's options); the directory handling they share (shards, header checks, the atomic export, the tokenizer)
lives in hf_gpt2 and is used from there.

The three architectures are one decoder: pre-norm RMSNorm, rotary positions, grouped-query attention and a gated
SiLU feed-forward (our positional="rope", norm="rmsnorm", n_kv_heads, activation="swiglu"). They differ in
    Llama    attention_bias and mlp_bias (both off, or both on: our bias), head_dim
    Mistral  no biases; sliding_window W: each query sees its W most recent keys, itself included, which is our
             attention="sliding", window=W (transformers' mask keeps key j for query i when i - W < j <= i)
    Qwen2    biases on the q, k and v projections only (our bias=False, qkv_bias=True); a sliding window only
             with use_sliding_window, on the layers that layer_types (or max_window_layers) name

Weights: torch's nn.Linear stores (out, in), so every projection is transposed into our (in, out); q_proj,
k_proj and v_proj become the column blocks [queries | keys | values] of W_qkv. No other reordering: the HF
checkpoints are already in the "rotate half" layout that our RoPE uses (HF's converter permuted Meta's
interleaved one), so a wrong layout here would load silently and compute garbage; tests compare with transformers.

Choices made where the formats differ:
  dtype    F32, F16 and BF16 tensors load as stored and widen into the model's dtype (float32 unless the caller
           asks for float64). Saving writes F32 tensors, with "dtype": "float32" in config.json.
  dropout  attention_dropout becomes our dropout (off in eval mode, where a loaded model starts), and is
           written back from it.
  tokens   config.json's bos/eos ids are not kept; an export names the tokenizer's <|endoftext|> as its
           eos_token_id when it has one, else none (so transformers' defaults, Llama's eos 2, cannot stop a
           generation early).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from device import to_host
from hf_gpt2 import (
    build_config,
    check_same_tensors,
    drop_tied_head,
    load_directory_tokenizer,
    merged_tensors,
    read_config_json,
    weight_file_headers,
    write_export,
)
from safetensors_io import TensorSpec, load_file
from tokenizer import ByteBPETokenizer, HFTokenizer, Tokenizer
from transformer_config import TransformerConfig

if TYPE_CHECKING:  # for the hints only: transformer_lm imports this module
    from transformer_lm import TransformerLM

# config.json's model_type -> the one class name its "architectures" may list.
ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# What transformers 5.24 assumes for a field config.json leaves out, per model_type (the config classes'
# defaults). num_key_value_heads: null means n_heads in all three, but an absent one means 8 for Mistral.
DEFAULTS = {
    "llama": dict(num_key_value_heads=None, max_position_embeddings=2048, tie_word_embeddings=False,
                  attention_bias=False, mlp_bias=False),
    "mistral": dict(num_key_value_heads=8, max_position_embeddings=4096 * 32, tie_word_embeddings=False,
                    sliding_window=4096),
    "qwen2": dict(num_key_value_heads=32, max_position_embeddings=32768, tie_word_embeddings=False,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28, layer_types=None),
}

# Fields the model's shape needs: a file without them is more likely damaged than meant to take the defaults.
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")

# Our config fields whose config.json names differ, so that an error about one names both.
FIELD_NAMES = {"d_model": "hidden_size", "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
               "n_layers": "num_hidden_layers", "d_ff": "intermediate_size", "max_seq_len": "max_position_embeddings",
               "layer_norm_eps": "rms_norm_eps", "rope_theta": "rope_parameters' (or the top-level) rope_theta",
               "tie_weights": "tie_word_embeddings", "dropout": "attention_dropout", "window": "sliding_window"}

# Keys that rope_parameters (or rope_scaling) may hold with the default rope_type.
ROPE_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor"}

# Fields whose presence means weights or a computation this model does not have.
REFUSED_FIELDS = {
    "quantization_config": "the weights are quantized (GPTQ, AWQ, bitsandbytes, ...); load a float checkpoint",
}

# Our settings that none of the three architectures can change: field -> (their value, what they do).
LLAMA_ARCHITECTURE = {
    "positional": ("rope", "they rotate queries and keys (RoPE)"),
    "norm": ("rmsnorm", "they normalize with RMSNorm"),
    "activation": ("swiglu", "their feed-forward is gated: down(silu(gate x) * up x)"),
    "norm_first": (True, "they normalize before each sub-layer (pre-norm) and once after the last block"),
    "adaptive_span": (False, "their attention heads have no learned span"),
}

# Inside block i: "decoder.blocks.{i}." + ours -> "model.layers.{i}." + theirs. W_qkv and b_qkv are three
# tensors each, the q, k and v projections.
BLOCK_NAMES = {
    "norm1.weight": "input_layernorm.weight",
    "norm2.weight": "post_attention_layernorm.weight",
    "attention.W_out": "self_attn.o_proj.weight",
    "attention.b_out": "self_attn.o_proj.bias",
    "feed_forward.W_gate": "mlp.gate_proj.weight",
    "feed_forward.b_gate": "mlp.gate_proj.bias",
    "feed_forward.W_in": "mlp.up_proj.weight",
    "feed_forward.b_in": "mlp.up_proj.bias",
    "feed_forward.W_out": "mlp.down_proj.weight",
    "feed_forward.b_out": "mlp.down_proj.bias",
}
QKV_NAMES = {"attention.W_qkv": "weight", "attention.b_qkv": "bias"}
TOP_LEVEL_NAMES = {
    "decoder.token_embedding.weight": "model.embed_tokens.weight",
    "decoder.final_norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",  # present only when untied
}
EMBEDDING, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
# Checkpoints of older transformers store RoPE's frequencies (model.layers.{i}.self_attn.rotary_emb.inv_freq):
# constants, not weights, which transformers skips too.
ROTARY_BUFFER = "rotary_emb.inv_freq"
TENSORS_PER_LAYER = 9  # at least: two norms, q, k, v, o, gate, up, down
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def hf_parts(name: str, config: TransformerConfig) -> list[tuple[str, slice]]:
    """Our parameter `name` as HF tensors: [(HF name, the columns, along our last axis, that it holds)]. Linear
    weights (ours named W_*) are also transposed: HF's tensor is the transpose of those columns."""
    if name in TOP_LEVEL_NAMES:
        return [(TOP_LEVEL_NAMES[name], slice(None))]
    _, _, index, inner_name = name.split(".", 3)  # "decoder", "blocks", i, the rest
    prefix = f"model.layers.{index}."
    if inner_name in QKV_NAMES:
        queries, keys = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
        columns = {"q": slice(0, queries), "k": slice(queries, queries + keys), "v": slice(queries + keys, None)}
        return [(f"{prefix}self_attn.{part}_proj.{QKV_NAMES[inner_name]}", part_columns)
                for part, part_columns in columns.items()]
    return [(prefix + BLOCK_NAMES[inner_name], slice(None))]


def is_linear_weight(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith("W_")


def hf_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """HF name -> shape of every tensor a checkpoint of `config` holds (from config.parameter_shapes)."""
    shapes = {}
    for name, shape in config.parameter_shapes().items():
        for hf_name, columns in hf_parts(name, config):
            start, stop, _ = columns.indices(shape[-1])  # not len(range(...)): sizes may exceed sys.maxsize
            part_shape = (*shape[:-1], stop - start)
            shapes[hf_name] = part_shape[::-1] if is_linear_weight(name) else part_shape
    return shapes


# ----------------------------------------------------------------------------------------------------------
# Loading


def read_pretrained(path: str | os.PathLike) -> tuple[TransformerConfig, dict[str, np.ndarray], Tokenizer | None]:
    """The Llama, Mistral or Qwen2 directory `path` as (config, weights, tokenizer), as hf_gpt2.read_pretrained
    gives a GPT-2 one: weights maps our parameter names to arrays of the shapes `config` implies, as stored
    (F16 and BF16 widen when copied into the model); the tokenizer is the directory's tokenizer.json (or GPT-2's
    vocab.json + merges.txt), None without one.

    Every problem is a ValueError naming the file and the field or tensor: a config option that changes the
    computation in a way this model does not implement is refused, never ignored. Each tensor's name and shape
    is checked against the config before any tensor is read.
    """
    directory, hf_config = read_config_json(path)
    config = config_from_hf(hf_config, source=directory / "config.json")
    headers = weight_file_headers(directory)
    check_declared_tensors(config, merged_tensors(headers, stored_weight_name), directory)

    tensors = merged_tensors({file: load_file(file) for file in headers}, stored_weight_name)
    if config.tie_weights:
        drop_tied_head(tensors, LM_HEAD, EMBEDDING, directory)
    weights = {}
    for name in config.parameter_shapes():
        parts = [tensors[hf_name] for hf_name, _ in hf_parts(name, config)]
        if is_linear_weight(name):
            parts = [part.T for part in parts]
        weights[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    return config, weights, load_directory_tokenizer(directory, config.vocab_size)


def stored_weight_name(name: str) -> str | None:
    """A stored tensor's name, or None for the RoPE buffers of old checkpoints, which are skipped."""
    return None if name.endswith(ROTARY_BUFFER) else name


def config_from_hf(hf_config: dict[str, Any], source: Path) -> TransformerConfig:
    """A parsed config.json (a dict) of a Llama, Mistral or Qwen2 model -> TransformerConfig, or ValueError
    naming the field it cannot represent."""
    model_type = hf_config.get("model_type")
    if not isinstance(model_type, str) or model_type not in ARCHITECTURES:
        raise ValueError(f"{source}: model_type is {model_type!r}; this module reads {sorted(ARCHITECTURES)}")
    architectures = hf_config.get("architectures") or [ARCHITECTURES[model_type]]
    if architectures != [ARCHITECTURES[model_type]]:
        raise ValueError(f"{source}: architectures={architectures!r:.80} is not supported: a {model_type} "
                         f"checkpoint loads as [{ARCHITECTURES[model_type]!r}] only (a language model with its head)")
    for name, reason in REFUSED_FIELDS.items():
        if hf_config.get(name) is not None:
            raise ValueError(f"{source}: {name} is not supported ({reason})")
    missing = [name for name in SHAPE_FIELDS if name not in hf_config]
    if missing:
        raise ValueError(f"{source}: lacks the field {missing[0]!r}, needed for the model's shape")
    fields = {**DEFAULTS[model_type], **hf_config}
    hidden_act = fields.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise ValueError(f"{source}: hidden_act={hidden_act!r:.40} is not supported (the gated feed-forward is "
                         "implemented with SiLU only: hidden_act='silu')")
    for name in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if name in fields and not isinstance(fields[name], bool):
            raise ValueError(f"{source}: {name} must be true or false, got {fields[name]!r:.40}")
    window = sliding_window(fields, model_type, source)
    if model_type == "qwen2":
        bias, qkv_bias = False, True
    elif model_type == "mistral":
        bias, qkv_bias = False, False
    elif fields["attention_bias"] != fields["mlp_bias"]:
        raise ValueError(f"{source}: attention_bias={fields['attention_bias']} with mlp_bias={fields['mlp_bias']} "
                         "is not supported (biases on every linear map, or on none)")
    else:
        bias = qkv_bias = fields["attention_bias"]
    head_dim = fields.get("head_dim")
    return build_config(
        source, FIELD_NAMES,
        vocab_size=fields["vocab_size"],
        d_model=fields["hidden_size"],
        n_heads=fields["num_attention_heads"],
        n_kv_heads=fields["num_key_value_heads"],  # None -> n_heads
        head_dim=head_dim,  # None -> d_model / n_heads
        n_layers=fields["num_hidden_layers"],
        d_ff=fields["intermediate_size"],
        max_seq_len=fields["max_position_embeddings"],
        dropout=fields.get("attention_dropout", 0.0),
        positional="rope",
        rope_theta=rope_theta(fields, source),
        norm_first=True,
        norm="rmsnorm",
        tie_weights=fields["tie_word_embeddings"],
        activation="swiglu",
        bias=bias,
        qkv_bias=qkv_bias,
        layer_norm_eps=fields.get("rms_norm_eps", 1e-6),
        attention="full" if window is None else "sliding",
        window=window,
        init="gpt2",
        dtype="float32",
    )


def rope_theta(fields: Mapping[str, Any], source: Path) -> Any:
    """The RoPE base from either config layout: transformers 5.x's rope_parameters {"rope_type", "rope_theta"},
    or the older top-level rope_theta beside rope_scaling (which, when not null, takes precedence, as in
    transformers). Only the default rope_type is implemented: llama3, linear, dynamic, yarn, ... and a partial
    rotary factor are refused, naming them."""
    layout = "rope_scaling" if fields.get("rope_scaling") else "rope_parameters"
    parameters = fields.get(layout) or {}
    if not isinstance(parameters, dict):
        raise ValueError(f"{source}: {layout} must be an object or null, got {parameters!r:.80}")
    rope_type = parameters.get("rope_type", parameters.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"{source}: {layout} has rope_type={rope_type!r:.40}, which is not supported (only the "
                         "default RoPE, without scaling, is implemented)")
    unknown = sorted(set(parameters) - ROPE_KEYS)
    if unknown:
        raise ValueError(f"{source}: {layout} holds {unknown[0]!r:.40}, which is not supported (with the default "
                         f"rope_type only {sorted(ROPE_KEYS)} are understood)")
    partial_rotary_factor = parameters.get("partial_rotary_factor", fields.get("partial_rotary_factor", 1.0))
    if partial_rotary_factor != 1:
        raise ValueError(f"{source}: partial_rotary_factor={partial_rotary_factor!r:.40} is not supported (RoPE "
                         "rotates every coordinate of each head: partial_rotary_factor=1)")
    return parameters.get("rope_theta", fields.get("rope_theta", 10000.0))


def sliding_window(fields: Mapping[str, Any], model_type: str, source: Path) -> Any:
    """The window of every layer's attention (our attention="sliding", window=W), or None for full attention.

    Mistral: sliding_window on every layer, or null. Qwen2: only with use_sliding_window, and only on the layers
    that layer_types marks "sliding_attention" (by default those from max_window_layers on); a model whose
    layers differ (some full, some sliding) is refused.
    """
    if model_type == "llama":
        return None
    window = fields["sliding_window"]
    if model_type == "mistral":
        return window
    window = window if fields["use_sliding_window"] else None
    layer_types = fields["layer_types"]
    if layer_types is None and window is None:
        return None
    if layer_types is None:  # transformers' rule: layers max_window_layers, ..., n_layers - 1 slide
        first_sliding, layers = fields["max_window_layers"], fields["num_hidden_layers"]
        for name, value in (("max_window_layers", first_sliding), ("num_hidden_layers", layers)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{source}: {name} must be an integer, got {value!r:.40}")
        if first_sliding <= 0:
            return window
        if first_sliding >= layers:
            return None
        raise ValueError(f"{source}: max_window_layers={first_sliding} gives layers {first_sliding} to {layers - 1} "
                         "a sliding window and the others full attention; a window that differs between layers is "
                         "not supported")
    if not isinstance(layer_types, list) or not set(layer_types) <= {"full_attention", "sliding_attention"}:
        raise ValueError(f"{source}: layer_types must be a list of 'full_attention' and 'sliding_attention', got "
                         f"{layer_types!r:.80}")
    if len(layer_types) != fields["num_hidden_layers"]:
        raise ValueError(f"{source}: layer_types lists {len(layer_types)} layers, but num_hidden_layers is "
                         f"{fields['num_hidden_layers']!r:.40}")
    if len(set(layer_types)) > 1:
        raise ValueError(f"{source}: layer_types mixes full_attention and sliding_attention layers; a window that "
                         "differs between layers is not supported")
    if "sliding_attention" not in layer_types:
        return None
    if window is None:
        raise ValueError(f"{source}: layer_types marks sliding_attention layers, but use_sliding_window is false "
                         "(or sliding_window null), so they have no window")
    return window


def check_declared_tensors(config: TransformerConfig, declared: Mapping[str, TensorSpec], directory: Path) -> None:
    """The tensors the safetensors headers declare (name -> TensorSpec) against those `config` implies: the same
    names, each of its shape and a float dtype; ValueError naming the first difference. The layer count is
    checked against the number of tensors first, so that an absurd one costs nothing."""
    if config.n_layers * TENSORS_PER_LAYER > len(declared):
        raise ValueError(f"{directory}: config.json says num_hidden_layers={config.n_layers}, but the weight files "
                         f"hold only {len(declared)} tensors, too few for {TENSORS_PER_LAYER} per layer")
    expected = hf_shapes(config)
    if config.tie_weights and LM_HEAD in declared:
        expected[LM_HEAD] = expected[EMBEDDING]  # a stored copy of the tied embedding, compared once loaded
    check_same_tensors(expected, {name: spec.shape for name, spec in declared.items()}, directory)
    for name, spec in declared.items():
        if spec.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{directory}: tensor {name!r} has dtype {spec.dtype}; weights must be floating point "
                             f"({', '.join(FLOAT_DTYPES)})")


# ----------------------------------------------------------------------------------------------------------
# Saving


def unsupported_setting(config: TransformerConfig) -> str | None:
    """Why none of Llama, Mistral and Qwen2 can hold a model of `config` (the first setting they have no
    equivalent for), or None when one can."""
    for name, (value, behaviour) in LLAMA_ARCHITECTURE.items():
        if getattr(config, name) != value:
            return (f"{name}={getattr(config, name)!r} has no Llama, Mistral or Qwen2 equivalent ({behaviour}: "
                    f"{name}={value!r})")
    if config.attention not in ("full", "sliding"):
        return (f"attention={config.attention!r} has no Llama, Mistral or Qwen2 equivalent (their attention is "
                "full, or Mistral's and Qwen2's sliding window)")
    if config.bias and not config.qkv_bias:
        return ("bias=True with qkv_bias=False has no Llama, Mistral or Qwen2 equivalent (biases everywhere is "
                "Llama's attention_bias and mlp_bias, on q, k and v only is Qwen2's)")
    if config.bias and config.attention == "sliding":
        return ("bias=True with attention='sliding' has no Llama, Mistral or Qwen2 equivalent (Llama, the one with "
                "biases everywhere, has no sliding window)")
    if config.d_model % config.n_heads:
        return (f"d_model={config.d_model} not divisible by n_heads={config.n_heads} has no Llama, Mistral or "
                "Qwen2 equivalent (transformers requires it even when head_dim is set apart)")
    return None


def save_pretrained(model: TransformerLM, path: str | os.PathLike) -> None:
    """Write `model` into directory `path` as transformers' Llama (the default), Qwen2 (biases on q, k and v
    only) or Mistral (a sliding window without biases): config.json in transformers 5.x's layout,
    model.safetensors with F32 tensors, and the tokenizer's files when `model.tokenizer` is an HFTokenizer
    (tokenizer.json) or a ByteBPETokenizer (GPT-2's vocab.json + merges.txt). Written
    whole or not at all, as hf_gpt2.write_export does.

    Raises ValueError, before writing anything, when no architecture can express the model (unsupported_setting)
    or the directory cannot take the export; see hf_gpt2.write_export.
    """
    config = model.config
    problem = unsupported_setting(config)
    if problem is not None:
        raise ValueError(problem)
    # A Hugging Face tokenizer is saved in its own files; a character tokenizer has no HF form and stays behind.
    tokenizer = model.tokenizer if isinstance(model.tokenizer, (HFTokenizer, ByteBPETokenizer)) else None
    tensors = {}
    for name, value in model.parameters().items():
        value = to_host(value)  # a GPU model's: copied to the host
        for hf_name, columns in hf_parts(name, config):
            part = value[..., columns]
            tensors[hf_name] = np.ascontiguousarray(part.T if is_linear_weight(name) else part, dtype=np.float32)
    write_export(path, tensors, hf_config(config, tokenizer), tokenizer)


def hf_config(config: TransformerConfig, tokenizer: HFTokenizer | ByteBPETokenizer | None) -> dict[str, Any]:
    """TransformerConfig -> config.json of the architecture that expresses it (see save_pretrained)."""
    if config.qkv_bias and not config.bias:
        model_type = "qwen2"
    elif config.attention == "sliding":
        model_type = "mistral"
    else:
        model_type = "llama"
    end_of_text = tokenizer.eot_token if tokenizer is not None else None
    fields = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.layer_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "tie_word_embeddings": config.tie_weights,
        "attention_dropout": config.dropout,
        "initializer_range": 0.02,
        "bos_token_id": None,
        "eos_token_id": end_of_text,
        "pad_token_id": None,
        "use_cache": True,
        "dtype": "float32",
    }
    window = config.window if config.attention == "sliding" else None
    if model_type == "llama":
        fields.update(attention_bias=config.bias, mlp_bias=config.bias)
    elif model_type == "mistral":
        fields.update(sliding_window=window)
    else:  # every layer slides from max_window_layers = 0 on, or none does
        fields.update(use_sliding_window=window is not None, sliding_window=window, max_window_layers=0)
    return fields

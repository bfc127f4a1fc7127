"""Hugging Face GPT-2 checkpoints: read one for a TransformerLM, and save a TransformerLM as one.

    model = TransformerLM.from_pretrained("gpt2-dir")     # config.json + model.safetensors (+ tokenizer)
    model.save_pretrained("out-dir")                      # transformers.GPT2LMHeadModel.from_pretrained reads it

Those two methods are thin: they call read_pretrained and save_pretrained here (or hf_llama's, for Llama,
Mistral and Qwen2). This module knows the GPT-2 format and the config, never the model class, so transformer_lm.py
imports it and not the other way round. What every Hugging Face directory needs (read_config_json,
weight_file_headers, merged_tensors, check_same_tensors, drop_tied_head, build_config, load_directory_tokenizer,
write_export) is written here once and used by hf_llama.py too.

A Hugging Face GPT-2 directory holds
    config.json                  the shape and options (n_layer, n_head, n_embd, n_positions, ...)
    model.safetensors            the weights; large models may instead be split into shards listed
                                 by model.safetensors.index.json
    vocab.json and merges.txt    optionally, GPT-2's byte-level BPE tokenizer

The weights map one to one onto ours with no transposes: GPT-2's Conv1D stores its matrices (in, out), as
`linear_forward` does, and the columns of c_attn are [queries | keys | values], like those of W_qkv.
Two generations of files exist and both load. Current transformers prefixes the body's tensors with
"transformer." and leaves lm_head.weight out when it is tied to wte. The original GPT-2 release (and files
converted from it) has no prefix and also stores each layer's causal mask, h.N.attn.bias and
h.N.attn.masked_bias: constants, not weights, which are skipped.

Choices made where the formats differ:
  dropout  GPT-2 has three rates (embd_pdrop, attn_pdrop, resid_pdrop; all 0.1 in GPT-2 itself) and we
           have one: loading takes resid_pdrop, saving writes our rate into all three. The loaded model
           comes back in eval mode, where dropout is off, as it does from transformers.
  dtype    loading always builds a float32 model (F16 and BF16 tensors widen exactly). Saving writes
           F32 tensors, so a float64 model is rounded to float32: GPT-2 checkpoints are float32, and
           transformers would load F64 tensors into a float32 model anyway.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from atomic_files import atomic_output, fsync_directory, read_json
from device import to_host
from safetensors_io import TensorSpec, load_file, read_header, save_file
from tokenizer import ByteBPETokenizer, Tokenizer, load_tokenizer
from transformer_config import TransformerConfig

if TYPE_CHECKING:  # for the hints only: transformer_lm imports this module
    from transformer_lm import TransformerLM

# Our parameter names outside the blocks -> GPT-2's (before the "transformer." prefix is added).
TOP_LEVEL_NAMES = {
    "decoder.token_embedding.weight": "wte.weight",
    "decoder.position_embedding.weight": "wpe.weight",
    "decoder.final_norm.weight": "ln_f.weight",
    "decoder.final_norm.bias": "ln_f.bias",
    "lm_head.weight": "lm_head.weight",  # present only when untied; never prefixed
}

# Names inside block i: "decoder.blocks.{i}." + ours -> "h.{i}." + GPT-2's.
BLOCK_NAMES = {
    "norm1.weight": "ln_1.weight",
    "norm1.bias": "ln_1.bias",
    "attention.W_qkv": "attn.c_attn.weight",
    "attention.b_qkv": "attn.c_attn.bias",
    "attention.W_out": "attn.c_proj.weight",
    "attention.b_out": "attn.c_proj.bias",
    "norm2.weight": "ln_2.weight",
    "norm2.bias": "ln_2.bias",
    "feed_forward.W_in": "mlp.c_fc.weight",
    "feed_forward.b_in": "mlp.c_fc.bias",
    "feed_forward.W_out": "mlp.c_proj.weight",
    "feed_forward.b_out": "mlp.c_proj.bias",
}

BODY_PREFIX = "transformer."
LM_HEAD = "lm_head.weight"
CAUSAL_MASK_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")

# GPT-2's activation_function values -> ours. gelu_new and gelu_pytorch_tanh are the same tanh formula.
ACTIVATIONS_FROM_GPT2 = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
ACTIVATIONS_TO_GPT2 = {"gelu_tanh": "gelu_new", "gelu": "gelu"}

# Config switches that change GPT-2's computation in ways this model cannot follow: name -> (the only
# value we support, which is also GPT-2's default; what that value means).
FIXED_SETTINGS = {
    "scale_attn_weights": (True, "attention scores are always divided by sqrt(head_dim)"),
    "scale_attn_by_inverse_layer_idx": (False, "no layer scales its scores by 1 / (layer index + 1)"),
    "reorder_and_upcast_attn": (False, "attention is computed in the model's own dtype, in the usual order"),
    "add_cross_attention": (False, "this is a decoder-only model without cross-attention"),
}

# Our settings that GPT-2 has no alternative to: field -> (GPT-2's value, what GPT-2 does instead).
GPT2_ARCHITECTURE = {
    "positional": ("learned", "GPT-2 learns its position embeddings"),
    "norm_first": (True, "GPT-2 applies LayerNorm before each sub-layer (pre-LN) and once after the last block"),
    "norm": ("layernorm", "GPT-2 normalizes with LayerNorm"),
    "bias": (True, "every linear map and LayerNorm of GPT-2 has a bias"),
    "qkv_bias": (True, "GPT-2's query/key/value projection has a bias"),
    "attention": ("full", "every GPT-2 query attends to all earlier positions"),
    "adaptive_span": (False, "GPT-2's attention heads have no learned span"),
}

# config.json fields we require, although transformers would fill in GPT-2 small's values: a file that
# leaves out the model's shape is more likely damaged than meant to be GPT-2 small.
SHAPE_FIELDS = ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head")

# Our config fields whose config.json names differ, so that an error about one names both.
GPT2_FIELD_NAMES = {"d_model": "n_embd", "n_heads": "n_head", "n_layers": "n_layer", "d_ff": "n_inner",
                    "max_seq_len": "n_positions", "dropout": "resid_pdrop", "tie_weights": "tie_word_embeddings",
                    "layer_norm_eps": "layer_norm_epsilon"}

# Every file of a Hugging Face model directory (GPT-2's, Llama's, ...) that describes the model or its
# tokenizer, as written here or by transformers. save_pretrained replaces them all, so nothing of an earlier
# export (a tokenizer, a shard, an index) survives beside the new one to be loaded with it.
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                "vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "added_tokens.json", "tokenizer.model")
SHARD_FILE = re.compile(r"model-\d+-of-\d+\.safetensors")  # transformers' shard names


def gpt2_name(name: str) -> str:
    """Our parameter name -> GPT-2's, without the "transformer." prefix."""
    if name in TOP_LEVEL_NAMES:
        return TOP_LEVEL_NAMES[name]
    _, _, index, inner_name = name.split(".", 3)  # "decoder", "blocks", i, the rest
    return f"h.{index}.{BLOCK_NAMES[inner_name]}"


# ----------------------------------------------------------------------------------------------------------
# Loading


def read_pretrained(path: str | os.PathLike) -> tuple[TransformerConfig, dict[str, np.ndarray], Tokenizer | None]:
    """The GPT-2 directory `path` as (config, weights, tokenizer), ready for TransformerLM.from_pretrained to
    build a model of `config` and copy `weights` (our parameter name -> array, each of the shape `config`
    implies and floating point: F16 and BF16 tensors come back as stored, to be widened by the copy) into it.

    The tokenizer is GPT-2's (a ByteBPETokenizer) when the directory also holds vocab.json and merges.txt (or
    tokenizer.json), else None.

    Every problem with the directory's content raises ValueError naming the file and the field or tensor:
    a config this model cannot represent, weights that do not fit the config, an index that does not match its
    shards. Missing files raise FileNotFoundError. The config is trusted only as far as the weight files back
    it: each shape it implies is compared with the shapes the safetensors headers declare (which the data
    section must hold) before any tensor is read, so config.json alone cannot make the caller allocate more
    than a few times the size of the weight files (float32 parameters and their gradients).
    """
    directory, hf_config = read_config_json(path)
    config = config_from_gpt2(hf_config, source=directory / "config.json")
    headers = weight_file_headers(directory)
    check_declared_shapes(config, by_gpt2_name(headers), source=directory)

    tensors = by_gpt2_name({file: load_file(file) for file in headers})
    if config.tie_weights:
        drop_tied_head(tensors, LM_HEAD, "wte.weight", directory)
    weights = our_weights(config.parameter_shapes(), tensors, source=directory)
    return config, weights, load_directory_tokenizer(directory, config.vocab_size)


def read_config_json(path: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(the directory `path`, its config.json as a dict), for any Hugging Face model directory; FileNotFoundError
    or NotADirectoryError when either is missing, ValueError when config.json is not a JSON object."""
    directory = Path(path)
    expected = "expected a Hugging Face model directory holding config.json and model.safetensors"
    if not directory.is_dir():
        error = NotADirectoryError if directory.exists() else FileNotFoundError
        raise error(f"{directory}: not a directory; {expected}")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory}: no config.json; {expected}")
    return directory, read_json_object(config_file)


def drop_tied_head(tensors: dict[str, np.ndarray], head: str, embedding: str, directory: Path) -> None:
    """Remove the output head `head` from `tensors` (HF name -> array) of a tied model: some converters store it
    anyway, and then it must be a copy of the embedding `embedding`; ValueError otherwise."""
    if head not in tensors:
        return
    stored = tensors.pop(head)
    if embedding in tensors and not np.array_equal(stored, tensors[embedding]):
        raise ValueError(f"{directory}: {head} differs from {embedding}, but config.json says tie_word_embeddings "
                         "is true")


def config_from_gpt2(gpt2_config: dict[str, Any], source: Path) -> TransformerConfig:
    """A parsed GPT-2 config.json (a dict) -> TransformerConfig, or ValueError naming the field it cannot
    represent."""
    model_type = gpt2_config.get("model_type")
    if model_type != "gpt2":
        raise ValueError(f"{source}: model_type is {model_type!r}; only 'gpt2' checkpoints can be loaded")
    for name, (supported, meaning) in FIXED_SETTINGS.items():
        value = gpt2_config.get(name, supported)
        if value != supported:
            raise ValueError(f"{source}: {name}={value!r} is not supported ({name}={supported} only: {meaning})")
    activation = gpt2_config.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in ACTIVATIONS_FROM_GPT2:
        raise ValueError(f"{source}: activation_function={activation!r} is not supported "
                         f"(choose one of {sorted(ACTIVATIONS_FROM_GPT2)})")
    missing = [name for name in SHAPE_FIELDS if name not in gpt2_config]
    if missing:
        raise ValueError(f"{source}: lacks the field {missing[0]!r}, needed for the model's shape")
    return build_config(
        source, GPT2_FIELD_NAMES,
        vocab_size=gpt2_config["vocab_size"],
        d_model=gpt2_config["n_embd"],
        n_heads=gpt2_config["n_head"],
        n_layers=gpt2_config["n_layer"],
        d_ff=gpt2_config.get("n_inner"),  # None -> 4 * d_model, as in GPT-2
        max_seq_len=gpt2_config["n_positions"],
        dropout=gpt2_config.get("resid_pdrop", 0.1),
        positional="learned",
        norm_first=True,
        tie_weights=gpt2_config.get("tie_word_embeddings", True),
        activation=ACTIVATIONS_FROM_GPT2[activation],
        layer_norm_eps=gpt2_config.get("layer_norm_epsilon", 1e-5),
        init="gpt2",
        dtype="float32",
    )


def build_config(source: Path, field_names: Mapping[str, str], **fields: Any) -> TransformerConfig:
    """TransformerConfig(**fields), or ValueError naming `source` and, through `field_names` (our field -> the
    config.json field it came from), the config.json field of any value TransformerConfig refuses."""
    try:
        return TransformerConfig(**fields)
    except (TypeError, ValueError) as error:
        named = [f"{ours} is {theirs} in config.json" for ours, theirs in field_names.items()
                 if re.search(rf"\b{ours}\b", str(error))]
        raise ValueError(f"{source}: cannot be represented: {error}" + (f" ({'; '.join(named)})" if named else "")
                         ) from None


def weight_file_headers(directory: Path) -> dict[Path, dict[str, TensorSpec]]:
    """file -> its safetensors header (stored name -> TensorSpec) for each file holding the weights:
    model.safetensors, or else the shards that model.safetensors.index.json lists.

    Each shard must be a plain file name, so that the index can only name files inside `directory`, and must
    hold exactly the tensors the index assigns to it. A directory with only a pickle checkpoint is refused.
    """
    single_file = directory / "model.safetensors"
    index_file = directory / "model.safetensors.index.json"
    if single_file.exists():
        return {single_file: read_header(single_file)}
    if not index_file.exists():
        pickle_file = directory / "pytorch_model.bin"
        if pickle_file.exists():
            load_file(pickle_file)  # refuses it with SafetensorsError, saying how to convert it
        raise FileNotFoundError(f"{directory}: no model.safetensors (nor a sharded model.safetensors.index.json)")

    weight_map = read_json_object(index_file).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_file}: expected a non-empty 'weight_map' object mapping tensor names to shard "
                         f"files, got {weight_map!r:.80}")
    names_by_shard = {}
    for name, shard in weight_map.items():
        if not is_plain_file_name(shard):
            raise ValueError(f"{index_file}: tensor {name!r} is assigned the shard {shard!r:.80}; expected the "
                             "name of a file in the same directory (no path separators, '..' or absolute paths)")
        names_by_shard.setdefault(shard, set()).add(name)
    for shard in sorted(names_by_shard):
        if not (directory / shard).is_file():
            raise ValueError(f"{index_file}: lists the shard {shard!r}, which is not a file in {directory}")
    headers = {}
    for shard, names in sorted(names_by_shard.items()):
        file = directory / shard
        headers[file] = read_header(file)
        absent, unlisted = sorted(names - headers[file].keys()), sorted(headers[file].keys() - names)
        if absent:
            raise ValueError(f"{file}: lacks tensor {absent[0]!r}" + others(absent) + f", which {index_file.name} "
                             "says this shard holds")
        if unlisted:
            raise ValueError(f"{file}: holds tensor {unlisted[0]!r}" + others(unlisted) + f", which "
                             f"{index_file.name} does not assign to this shard")
    return headers


def is_plain_file_name(name: object) -> bool:
    """True for a str naming a file in a directory, with no way to reach outside it: not empty, not "." or
    "..", without separators ("/", and "\\" and ":" as Windows reads them) or NUL."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(char in name for char in "/\\:\0")


def by_gpt2_name(contents: Mapping[Path, Mapping[str, Any]]) -> dict[str, Any]:
    """{file: {stored name: value}} -> {GPT-2 name (without the "transformer." prefix): value} over all files.

    The values are whatever was read: arrays (load_file) or TensorSpecs (read_header). The causal-mask
    buffers of old files are dropped; a name stored twice is refused.
    """
    def gpt2_stored_name(stored_name):
        name = stored_name.removeprefix(BODY_PREFIX)
        return None if CAUSAL_MASK_BUFFER.fullmatch(name) else name
    return merged_tensors(contents, gpt2_stored_name)


def merged_tensors(contents: Mapping[Path, Mapping[str, Any]], rename: Callable[[str], str | None]
                   ) -> dict[str, Any]:
    """{file: {stored name: value}} -> {rename(stored name): value} over all files (read_header's TensorSpecs or
    load_file's arrays), leaving out the names that `rename` maps to None; a name stored twice (in two shards, or
    with and without a prefix that `rename` drops) is refused."""
    merged = {}
    for file, stored in contents.items():
        for stored_name, value in stored.items():
            name = rename(stored_name)
            if name is None:
                continue
            if name in merged:
                raise ValueError(f"{file}: tensor {name!r} is stored twice (in two shards, or with and without "
                                 "a prefix)")
            merged[name] = value
    return merged


def check_declared_shapes(config: TransformerConfig, declared: Mapping[str, TensorSpec], source: Path) -> None:
    """Compare the tensors the safetensors headers declare (GPT-2 name -> TensorSpec) with those `config`
    implies, before a model of that config is built: ValueError naming `source` and the first difference."""
    # Each layer has len(BLOCK_NAMES) tensors. A layer count the files cannot hold is refused before even the
    # list of expected names, one per tensor, is made (parameter_shapes costs O(n_layers)).
    if config.n_layers * len(BLOCK_NAMES) > len(declared):
        raise ValueError(f"{source}: config.json says n_layer={config.n_layers}, but the weight files hold only "
                         f"{len(declared)} tensors, too few for {len(BLOCK_NAMES)} per layer")
    expected = {gpt2_name(name): shape for name, shape in config.parameter_shapes().items()}
    if config.tie_weights and LM_HEAD in declared:
        expected[LM_HEAD] = expected["wte.weight"]  # a stored copy of the tied embedding, compared once loaded
    check_same_tensors(expected, {name: spec.shape for name, spec in declared.items()}, source)


def check_same_tensors(expected: Mapping[str, Sequence[int]], actual: Mapping[str, Sequence[int]], source: Path
                       ) -> None:
    """Both dicts (name -> shape) must have the same names and each name the same shape; otherwise
    ValueError naming the tensor and `source` (the file or directory, for the message)."""
    missing = [name for name in expected if name not in actual]
    if missing:
        raise ValueError(f"{source}: missing tensor {missing[0]!r}" + others(missing))
    unexpected = [name for name in actual if name not in expected]
    if unexpected:
        raise ValueError(f"{source}: unexpected tensor {unexpected[0]!r}" + others(unexpected)
                         + " (the config describes a model without it)")
    for name, shape in expected.items():
        if tuple(actual[name]) != tuple(shape):
            raise ValueError(f"{source}: tensor {name!r} has shape {tuple(actual[name])}, but the config needs "
                             f"{tuple(shape)}")


def our_weights(shapes: Mapping[str, tuple[int, ...]], tensors: Mapping[str, np.ndarray], source: Path
                ) -> dict[str, np.ndarray]:
    """GPT-2 name -> array (`tensors`) as our name -> array for the names of `shapes` (TransformerConfig's
    parameter_shapes, whose names and shapes check_declared_shapes compared with the files' headers already), each
    floating point; otherwise ValueError naming the tensor and `source`."""
    weights = {name: tensors[gpt2_name(name)] for name in shapes}
    for name, value in weights.items():
        if value.dtype.kind != "f":
            raise ValueError(f"{source}: tensor {gpt2_name(name)!r} has dtype {value.dtype}; weights must be "
                             "floating point")
    return weights


def others(names: Sequence[str]) -> str:
    """' (and N more)' after the first of several names in a message, '' for one."""
    return f" (and {len(names) - 1} more)" if len(names) > 1 else ""


def load_directory_tokenizer(directory: Path, vocab_size: int) -> Tokenizer | None:
    """The tokenizer in `directory` as tokenizer.load_tokenizer finds it (GPT-2's vocab.json + merges.txt, or a
    tokenizer.json: GPT-2's as current transformers saves it, or Llama's, Qwen2's, ...), or None when there is none.
    One of vocab.json and merges.txt without the other (and no tokenizer.json) is a damaged directory, refused
    rather than loaded without its tokenizer."""
    try:
        tokenizer = load_tokenizer(directory)
    except (OSError, TypeError, ValueError) as error:
        raise ValueError(f"{directory}: cannot load the tokenizer: {error}") from None
    if tokenizer is not None and tokenizer.vocab_size > vocab_size:
        raise ValueError(f"{directory}: the tokenizer has {tokenizer.vocab_size} tokens, more than the "
                         f"model's vocab_size {vocab_size}")
    return tokenizer


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in file `path`, as a dict (read by atomic_files.read_json); ValueError naming the file for
    anything else."""
    content = read_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object {{...}}, got {type(content).__name__} {content!r:.80}")
    return content


# ----------------------------------------------------------------------------------------------------------
# Saving


def save_pretrained(model: TransformerLM, path: str | os.PathLike) -> None:
    """Write `model` into directory `path` (created if needed) in the layout of transformers' GPT-2:
    model.safetensors, config.json, and vocab.json + merges.txt when `model.tokenizer` is a
    ByteBPETokenizer. See write_export for how the files are put in place.

    Raises ValueError, before writing anything, when a setting of the model has no GPT-2 equivalent or the
    config cannot be written as JSON, or when `path` holds a train.py checkpoint (whose config.json and
    tokenizer files the export would replace); NotADirectoryError when `path` is an existing file.
    """
    config = model.config
    problem = unsupported_setting(config)
    if problem is not None:
        raise ValueError(problem)
    tokenizer = model.tokenizer
    if not isinstance(tokenizer, ByteBPETokenizer):
        tokenizer = None  # only GPT-2's byte-level BPE has a GPT-2 form; a character tokenizer stays behind
    tensors = {}
    for name, value in model.parameters().items():
        stored_name = gpt2_name(name)
        if stored_name != LM_HEAD:
            stored_name = BODY_PREFIX + stored_name
        tensors[stored_name] = to_host(value).astype(np.float32, copy=False)  # a GPU model's: copied to the host
    write_export(path, tensors, gpt2_config(config, tokenizer), tokenizer)


def unsupported_setting(config: TransformerConfig) -> str | None:
    """Why the GPT-2 layout cannot hold a model of `config` (the first setting it has no equivalent for), or
    None when it can."""
    for name, (gpt2_value, gpt2_behaviour) in GPT2_ARCHITECTURE.items():
        value = getattr(config, name)
        if value != gpt2_value:
            return f"{name}={value!r} has no GPT-2 equivalent ({gpt2_behaviour}: {name}={gpt2_value!r})"
    if config.activation not in ACTIVATIONS_TO_GPT2:
        return (f"activation={config.activation!r} has no GPT-2 equivalent (GPT-2's feed-forward is Linear, GELU, "
                f"Linear: activation in {list(ACTIVATIONS_TO_GPT2)})")
    if config.n_kv_heads != config.n_heads or config.n_heads * config.head_dim != config.d_model:
        return (f"n_kv_heads={config.n_kv_heads}, head_dim={config.head_dim} has no GPT-2 equivalent (every GPT-2 head "
                f"has its own keys and values, and head_dim = n_embd / n_head: n_kv_heads={config.n_heads}, "
                f"head_dim={config.d_model // config.n_heads})")
    return None


def write_export(path: str | os.PathLike, tensors: dict[str, np.ndarray], hf_config: dict[str, Any],
                 tokenizer: Tokenizer | None) -> None:
    """Write a Hugging Face model directory `path` (created if needed): `tensors` (stored name -> array) as
    model.safetensors, `hf_config` as config.json, and the tokenizer's own files when it is not None.

    The export is written whole. Its files are first written into a fresh staging directory inside `path`;
    then the files of any earlier export there (EXPORT_FILES and shards) are removed and the new ones renamed
    into place, config.json last. A failure while writing leaves an earlier export untouched; a crash during
    the renames leaves no config.json, so the directory refuses to load rather than mixing two exports. Other
    files in `path` are kept.

    Raises ValueError, before writing anything, when `hf_config` cannot be written as JSON or `path` holds a
    train.py checkpoint; NotADirectoryError when `path` is an existing file.
    """
    try:
        config_text = json.dumps(hf_config, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise ValueError(f"the model's config cannot be written as config.json ({error}); its fields must be "
                         "plain Python numbers, strings and booleans, and finite") from None
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory}: exists and is not a directory; save_pretrained writes a directory")
    if (directory / "model.npz").exists():
        raise ValueError(f"{directory}: holds a train.py checkpoint (model.npz), whose config.json and tokenizer "
                         "files an export would replace; export to a directory of its own")
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".save_pretrained-"))
    try:
        # transformers looks for "format": "pt" to know the file was written for PyTorch models.
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(staging)
        with atomic_output(staging / "config.json") as output:
            output.write(config_text.encode("utf-8"))
        replace_export(directory, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_export(directory: Path, staging: Path) -> None:
    """Put the files of `staging` in place of the export files in `directory`. config.json goes first and
    comes back last: a directory caught half-way has none, so it cannot load as a mix of two exports."""
    stale = [file for file in directory.iterdir() if file.name in EXPORT_FILES or SHARD_FILE.fullmatch(file.name)]
    for file in sorted(stale, key=lambda file: file.name != "config.json"):
        file.unlink()
    for file in sorted(staging.iterdir(), key=lambda file: file.name == "config.json"):
        os.replace(file, directory / file.name)
    fsync_directory(directory)


def gpt2_config(config: TransformerConfig, tokenizer: ByteBPETokenizer | None) -> dict[str, Any]:
    """TransformerConfig -> the fields of a GPT-2 config.json. The tokenizer's end-of-text token becomes
    bos_token_id and eos_token_id, as in GPT-2; without one both are null (GPT-2's default, 50256, would
    lie outside a smaller vocabulary)."""
    end_of_text = tokenizer.eot_token if tokenizer is not None else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_seq_len,
        "n_embd": config.d_model,
        "n_layer": config.n_layers,
        "n_head": config.n_heads,
        "n_inner": config.d_ff,
        "activation_function": ACTIVATIONS_TO_GPT2[config.activation],
        "layer_norm_epsilon": config.layer_norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        **{name: supported for name, (supported, _) in FIXED_SETTINGS.items()},
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "use_cache": True,
    }

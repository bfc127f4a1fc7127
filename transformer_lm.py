"""TransformerLM: the Decoder plus an output projection to vocabulary logits, with loss and backward.

    from transformer_lm import TransformerLM, TransformerConfig
    model = TransformerLM(TransformerConfig(vocab_size=65, d_model=128, n_heads=4, n_layers=4), seed=0)
    logits = model(ids)                   # (B, T) int -> (B, T, vocab_size)
    loss = model.loss(ids, targets)       # mean cross-entropy; targets == -100 are skipped
    grads = model.backward()              # name -> gradient, same keys as model.parameters()

The settings (TransformerConfig, PRESETS, CHOICES, IGNORE_INDEX) live in transformer_config.py and are re-exported here.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Iterable, Iterator

import numpy as np
import numpy.typing as npt

import generation
import hf_gpt2
import hf_llama
from attention import AttentionPattern
from checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from decoder import Decoder
from device import device_module, random_generator, to_device, to_host
from module import Dropout, Module
from precision import autocast, matmul, operand_rounding
from transformer_config import CHOICES, IGNORE_INDEX, PRESETS, TransformerConfig  # noqa: F401  (re-exported)


class TransformerLM(Module):
    """ids (B, T) -> logits (B, T, vocab_size). All randomness (initialization and dropout masks)
    comes from `self.rng`, a Generator seeded by `seed`."""

    def __init__(self, config: TransformerConfig, seed: int | None = 0) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        # How the matrix products round their operands (None: float32 products); a bad precision fails here.
        self.operand_rounding = operand_rounding(config.precision)
        self.rng = np.random.default_rng(seed)
        self.decoder = Decoder(config, self.rng)
        if not config.tie_weights:
            self.add_parameter("lm_head.weight", np.zeros((config.vocab_size, config.d_model),
                                                          dtype=config.numpy_dtype))
        self.initialize()
        self.tokenizer = None        # set by from_pretrained when the directory holds tokenizer files
        self.hidden = None           # decoder output cached for the head's backward
        # What backward() needs from loss(), with the decoder pass it made: any later pass through the
        # decoder (forward, generate, stream, a picture) overwrites the layer caches, and backward() refuses.
        self.loss_cache = None
        self.device = "cpu"          # where the parameters live: see to()

    def to(self, device: str) -> TransformerLM:
        """Move the model to `device` and return it: "cpu" (NumPy) or "cuda" (CuPy on an NVIDIA GPU; pip install -r
        requirements-gpu.txt). Build it first (the parameters start on the host, from self.rng, so a GPU model starts
        as the CPU one does), then move it, then take parameters() and build the optimizer. On a GPU the ids and
        targets cross to it once per loss() or forward(), the logits stay there (device.to_host copies them back),
        and dropout masks come from a generator of the device seeded by one draw from self.rng."""
        xp = device_module(device)
        dropout_rng = self.rng if device == "cpu" else random_generator(xp, int(self.rng.integers(2**63)))
        for _, module in self.named_modules():
            if isinstance(module, Dropout):
                module.rng = dropout_rng
        super().to(device)
        self.device = device
        self.hidden = self.loss_cache = None
        return self

    def initialize(self) -> None:
        """Fill every matrix (ndim 2, embeddings included) from self.rng; vectors keep their start
        (biases 0, LayerNorm gains 1).

        xavier: uniform(-a, a), a = sqrt(6 / (rows + columns)) (Glorot & Bengio 2010), with rows and
                columns of the matrix as stored: weights (in, out), embeddings (vocab or positions, C).
        gpt2:   normal(0, 0.02); the two projections that write into the residual stream (attention
                and feed-forward W_out) get 0.02 / sqrt(2 * n_layers), as in GPT-2 and nanoGPT.
        """
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, value in self.parameters().items():
            if value.ndim != 2:
                continue
            if self.config.init == "xavier":
                bound = math.sqrt(6.0 / sum(value.shape))
                value[...] = self.rng.uniform(-bound, bound, value.shape)
            else:
                std = residual_std if name.endswith("W_out") else 0.02
                value[...] = self.rng.normal(0.0, std, value.shape)

    @property
    def output_weight(self) -> np.ndarray:
        """(vocab_size, C): the token embedding when tied, else the separate lm_head."""
        if self.config.tie_weights:
            return self.decoder.token_embedding.params["weight"]
        return self.params["lm_head.weight"]

    @property
    def output_grad(self) -> np.ndarray:
        """(vocab_size, C): the gradient of output_weight."""
        if self.config.tie_weights:
            return self.decoder.token_embedding.grads["weight"]
        return self.grads["lm_head.weight"]

    def num_parameters(self) -> int:
        """The number of trained numbers (a tied output projection counts once)."""
        return sum(value.size for value in self.parameters().values())

    def check_ids(self, ids: npt.ArrayLike, name: str = "ids", check_length: bool = True) -> np.ndarray:
        """Validate token ids at the public boundary: an integer array (B, T), each in [0, vocab_size), and
        (check_length) no longer than max_seq_len with learned positions."""
        ids = to_host(ids)  # checked on the host, where the batch comes from
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{name} must be an integer array of token ids, got dtype {ids.dtype}")
        if ids.ndim != 2:
            raise ValueError(f"{name} must have shape (batch, seq_len), got shape {ids.shape}")
        if ids.size == 0:
            raise ValueError(f"{name} is empty (shape {ids.shape}); need at least one token per sequence")
        out_of_range = (ids < 0) | (ids >= self.config.vocab_size)
        if out_of_range.any():
            position = tuple(int(i) for i in np.argwhere(out_of_range)[0])
            raise ValueError(f"token id {ids[position]} at {name}{list(position)} is out of range "
                             f"[0, {self.config.vocab_size})")
        if check_length and self.config.positional == "learned" and ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_seq_len {self.config.max_seq_len} "
                             "(learned positions have no embedding beyond it)")
        return ids

    def forward(self, ids: npt.ArrayLike) -> np.ndarray:
        """ids: (B, T) integers in [0, vocab_size) -> logits (B, T, vocab_size)."""
        return self.logits(to_device(self.check_ids(ids), self.device))

    __call__ = forward

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """forward without the checks, for ids already validated: (B, T) -> (B, T, vocab_size)."""
        with autocast(self.operand_rounding):
            self.hidden = self.decoder.forward(ids)                      # (B, T, C)
            return matmul(self.hidden, self.output_weight.T)             # (B, T, V)

    def loss(self, ids: npt.ArrayLike, targets: npt.ArrayLike, ignore_index: int = IGNORE_INDEX) -> float:
        """Mean cross-entropy of next-token targets (B, T) over the positions not equal to ignore_index.

        In training mode plus the penalties of the layers (Module.penalty: with adaptive_span, the L1
        penalty span_loss_coefficient * (mean span in tokens) of every layer); backward() includes their
        gradient. Evaluation mode leaves them out, so validation losses stay plain cross-entropies.
        """
        ids = self.check_ids(ids)
        targets = to_host(targets)
        if targets.dtype.kind not in "iu":
            raise TypeError(f"targets must be an integer array, got dtype {targets.dtype}")
        if targets.shape != ids.shape:
            raise ValueError(f"targets shape {targets.shape} must match ids shape {ids.shape}")
        valid = targets != ignore_index
        if not valid.any():
            raise ValueError(f"every target equals ignore_index ({ignore_index}); nothing to learn from")
        bad = valid & ((targets < 0) | (targets >= self.config.vocab_size))
        if bad.any():
            position = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"target {targets[position]} at targets{list(position)} is out of range "
                             f"[0, {self.config.vocab_size}) and is not ignore_index ({ignore_index})")

        rows = np.flatnonzero(valid)
        # The batch crosses to the model's device once (nothing moves on the CPU).
        ids, valid, rows, target_ids = (to_device(array, self.device)
                                        for array in (ids, valid, rows, targets.reshape(-1)[rows]))
        logits = self.logits(ids).reshape(-1, self.config.vocab_size)   # (B*T, V), ours to overwrite
        # loss_i = logsumexp(logits_i) - logits_i[target_i], computed on max-shifted logits; the same
        # buffer then becomes the softmax probabilities that backward needs.
        logits -= logits.max(axis=1, keepdims=True)
        target_logits = logits[rows, target_ids]
        probabilities = np.exp(logits, out=logits)
        sums = probabilities.sum(axis=1, keepdims=True)
        probabilities /= sums
        losses = np.log(sums[rows, 0]) - target_logits
        penalized = self.training
        self.loss_cache = (probabilities, valid.reshape(-1), rows, target_ids, penalized, self.decoder.passes)
        return float(np.sum(losses, dtype=np.float64) / rows.size) + (self.penalty() if penalized else 0.0)

    def backward(self, loss_scale: float = 1.0) -> dict[str, np.ndarray]:
        """Gradients of the last loss() for every parameter: dict name -> array (the model's own
        buffers, overwritten by the next backward; copy them to accumulate over micro-batches).
        loss_scale: the gradients of loss_scale * loss (fp16's loss scaling, precision.LossScaler)."""
        if self.loss_cache is None or self.loss_cache[-1] != self.decoder.passes:
            self.loss_cache = None
            raise RuntimeError("backward() needs a preceding loss(ids, targets) and no pass through the model since "
                               "(forward, generate, stream or anything else that runs the decoder)")
        probabilities, valid, rows, target_ids, penalized, _ = self.loss_cache
        self.loss_cache = None
        self.zero_grad()
        if penalized:
            self.penalty_backward(loss_scale)
        # d(mean cross-entropy)/d logits = (softmax - one_hot(target)) / count, zero at ignored rows.
        dlogits = probabilities
        dlogits[rows, target_ids] -= 1.0
        dlogits *= (float(loss_scale) / rows.size)
        dlogits[~valid] = 0.0
        hidden_2d = self.hidden.reshape(-1, self.config.d_model)
        with autocast(self.operand_rounding):
            self.output_grad[...] += matmul(dlogits.T, hidden_2d)          # (V, C)
            dhidden = matmul(dlogits, self.output_weight).reshape(self.hidden.shape)
            self.decoder.backward(dhidden)
        return self.gradients()

    def attention_patterns(self) -> list[AttentionPattern]:
        """The attention pattern of every layer, first layer first: the live objects, with their parameters
        (the adaptive span's), their `window` and the weights of the last dense pass (dense_weights)."""
        return [block.attention.pattern for block in self.decoder.blocks]

    def generate(self, ids: generation.Prompts, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, stop_tokens: Iterable[int] | None = None, seed: generation.Seed = None,
                 crop_context: bool = False) -> np.ndarray | list[list[int]]:
        """Continue each prompt by max_new_tokens tokens (fewer when every row hits a stop token),
        reusing keys and values through a KV cache.

        ids: (B, T) or (T,) int array, or a list of prompts of different lengths (left-padded inside,
             each row generated as if alone). Returns the prompt + new tokens in the same form.
        temperature 0 is greedy; top_k keeps the k most likely tokens; top_p keeps the smallest set
        whose probability reaches p. seed: a fresh Generator for this call (None -> self.rng).
        crop_context: with learned positions, go past max_seq_len by conditioning on the last max_seq_len
        tokens (nanoGPT's policy) instead of raising; see generation.stream.
        """
        return generation.generate(self, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                   top_p=top_p, stop_tokens=stop_tokens, seed=seed, crop_context=crop_context)

    def stream(self, ids: generation.Prompts, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, stop_tokens: Iterable[int] | None = None, seed: generation.Seed = None,
               crop_context: bool = False) -> Iterator[np.ndarray]:
        """Like generate, but an iterator that yields the new token of every row, (B,), as it comes."""
        return generation.stream(self, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                 top_p=top_p, stop_tokens=stop_tokens, seed=seed, crop_context=crop_context)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: str = "float32") -> TransformerLM:
        """A model of `dtype`, in eval mode, with the weights of the Hugging Face directory `path` (config.json +
        model.safetensors, or shards) of a GPT-2, Llama, Mistral or Qwen2 model, and its tokenizer as
        `model.tokenizer` when the directory has one (else None). The directory is checked whole before the model
        is built; see hf_gpt2.read_pretrained and hf_llama.read_pretrained for what they refuse."""
        _, hf_config = hf_gpt2.read_config_json(path)
        model_type = hf_config.get("model_type")
        if model_type != "gpt2" and (not isinstance(model_type, str) or model_type not in hf_llama.ARCHITECTURES):
            raise ValueError(f"{path}: config.json has model_type {model_type!r:.40} (architectures "
                             f"{hf_config.get('architectures')!r:.80}); supported: 'gpt2' (GPT2LMHeadModel), "
                             + ", ".join(f"{name!r} ({cls_name})" for name, cls_name in hf_llama.ARCHITECTURES.items()))
        reader = hf_gpt2 if model_type == "gpt2" else hf_llama
        config, weights, tokenizer = reader.read_pretrained(path)
        model = cls(dataclasses.replace(config, dtype=dtype))
        for name, value in model.parameters().items():
            value[...] = weights[name]  # F16 and BF16 widen to the model's dtype
        model.tokenizer = tokenizer
        return model.eval()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write this model as a Hugging Face directory that transformers.AutoModelForCausalLM loads: GPT-2's
        layout for a GPT-2-style model (hf_gpt2.save_pretrained), else Llama's, Qwen2's or Mistral's
        (hf_llama.save_pretrained); ValueError naming the setting when neither can express it."""
        config = self.config
        gpt2_problem, llama_problem = hf_gpt2.unsupported_setting(config), hf_llama.unsupported_setting(config)
        if gpt2_problem is None:
            hf_gpt2.save_pretrained(self, path)
        elif llama_problem is None:
            hf_llama.save_pretrained(self, path)
        else:  # the message starts with the format the model is closer to
            modern = config.positional == "rope" or config.norm == "rmsnorm" or config.activation == "swiglu"
            first, second = (llama_problem, gpt2_problem) if modern else (gpt2_problem, llama_problem)
            raise ValueError(f"{first}; and {second}")

    def save(self, directory: str | os.PathLike) -> None:
        """Write this model and its tokenizer (self.tokenizer, when set) as this project's checkpoint: config.json,
        model.npz, state.json, the tokenizer's files; a crash leaves the previous copy or this one (checkpoint.py)."""
        save_checkpoint(directory, self, tokenizer=self.tokenizer)

    @classmethod
    def load(cls, directory: str | os.PathLike, seed: int | None = None) -> TransformerLM:
        """The model that `save` (or train.py, in OUT_DIR/checkpoint) wrote: config, weights and tokenizer as
        model.tokenizer (None without one), every file checked before the model is built. The dropout generator
        continues where the saved one stood, or starts from `seed` when one is given."""
        saved = read_checkpoint(directory)
        model = cls(saved.config, seed=0 if seed is None else seed)
        saved.load_into(model, restore_rng=seed is None)
        return model


def add_model_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The two model sources of the command-line tools, --checkpoint and --hf-model, exactly one required;
    load_model_and_tokenizer(args.checkpoint, args.hf_model) reads either."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a checkpoint directory written by train.py (or its --out-dir)")
    source.add_argument("--hf-model", help="a Hugging Face GPT-2, Llama, Mistral or Qwen2 directory: config.json, "
                                           "model.safetensors, and tokenizer.json (or vocab.json + merges.txt)")


def load_model_and_tokenizer(checkpoint: str | os.PathLike | None = None, hf_model: str | os.PathLike | None = None,
                             require_tokenizer: bool = False) -> tuple[TransformerLM, object]:
    """(model, its tokenizer or None) from exactly one source: a train.py checkpoint directory (or run directory)
    or a Hugging Face directory (GPT-2, Llama, Mistral, Qwen2); what the command-line tools load. Any problem is a
    CheckpointError, a ValueError or an OSError that says what; require_tokenizer=True makes a model saved without
    one an error."""
    if (checkpoint is None) == (hf_model is None):
        raise ValueError("give exactly one of checkpoint and hf_model")
    if checkpoint is not None:
        model = TransformerLM.load(checkpoint, seed=0)
    else:
        model = TransformerLM.from_pretrained(hf_model)
    if require_tokenizer and model.tokenizer is None:
        raise CheckpointError(f"{checkpoint or hf_model} has no tokenizer saved beside the model, so text cannot "
                              "be encoded")
    return model, model.tokenizer

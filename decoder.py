"""The decoder stack: embeddings in, N residual blocks of attention and feed-forward, hidden states out."""
from __future__ import annotations

from typing import Any

import numpy as np

from attention import CausalSelfAttention, KVCache
from device import array_module
from feed_forward import FeedForward
from layer_norm import LayerNorm, RMSNorm
from module import Dropout, Embedding, Module
from positional_encoding import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from sparse_attention import make_pattern
from transformer_config import TransformerConfig


def make_norm(config: TransformerConfig) -> LayerNorm | RMSNorm:
    """The normalization the config names: LayerNorm (with a bias unless config.bias is False) or RMSNorm."""
    if config.norm == "rmsnorm":
        return RMSNorm(config.d_model, config.layer_norm_eps, config.numpy_dtype)
    return LayerNorm(config.d_model, config.layer_norm_eps, config.numpy_dtype, bias=config.bias)


def residual_forward(x: np.ndarray, sublayer: Module, norm: Module, norm_first: bool, **sublayer_options: Any
                     ) -> np.ndarray:
    """One residual sub-layer in either arrangement (sublayer_options go to sublayer.forward); norm is
    LayerNorm or RMSNorm.

    post-LN (the original Transformer): LayerNorm(x + sublayer(x))
    pre-LN  (GPT-2, Llama):             x + sublayer(LayerNorm(x))
    """
    if norm_first:
        return x + sublayer.forward(norm.forward(x), **sublayer_options)
    return norm.forward(x + sublayer.forward(x, **sublayer_options))


def residual_backward(dout: np.ndarray, sublayer: Module, norm: Module, norm_first: bool) -> np.ndarray:
    """The gradient of `residual_forward`: the identity path plus the path through the sub-layer."""
    if norm_first:
        return dout + norm.backward(sublayer.backward(dout))
    dsum = norm.backward(dout)
    return dsum + sublayer.backward(dsum)


class DecoderBlock(Module):
    """x: (B, T, C) -> (B, T, C): attention then feed-forward, each inside a residual connection
    with a LayerNorm or RMSNorm (config.norm), post-LN (norm_first=False) or pre-LN (norm_first=True); see
    residual_forward."""

    def __init__(self, config: TransformerConfig, rng: np.random.Generator) -> None:
        super().__init__()
        dtype = config.numpy_dtype
        self.norm_first = config.norm_first
        self.attention = CausalSelfAttention(
            config.d_model, config.n_heads, config.dropout, rng, dtype, pattern=make_pattern(config), bias=config.bias,
            n_kv_heads=config.n_kv_heads, head_dim=config.head_dim, qkv_bias=config.qkv_bias,
            rope_theta=config.rope_theta if config.positional == "rope" else None)
        self.norm1 = make_norm(config)
        self.feed_forward = FeedForward(config.d_model, config.d_ff, config.activation,
                                        config.dropout, rng, dtype, bias=config.bias)
        self.norm2 = make_norm(config)

    def forward(self, x: np.ndarray, kv_cache: KVCache | None = None, key_padding: np.ndarray | None = None,
                positions: np.ndarray | None = None) -> np.ndarray:
        """x: (B, T, C) -> (B, T, C); kv_cache, key_padding and positions go to the attention."""
        x = residual_forward(x, self.attention, self.norm1, self.norm_first,
                             kv_cache=kv_cache, key_padding=key_padding, positions=positions)
        return residual_forward(x, self.feed_forward, self.norm2, self.norm_first)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (B, T, C) -> dx (B, T, C), the two sub-layers in reverse order."""
        dout = residual_backward(dout, self.feed_forward, self.norm2, self.norm_first)
        return residual_backward(dout, self.attention, self.norm1, self.norm_first)


class Decoder(Module):
    """ids: (B, T) -> hidden states (B, T, C).

    token embedding + positions -> dropout -> N DecoderBlocks -> final norm (pre-LN only: there the last
    block's output has not been normalized yet; post-LN blocks already end in a norm). With positional="rope"
    nothing is added here: the attention layers rotate queries and keys by the positions instead.
    """

    def __init__(self, config: TransformerConfig, rng: np.random.Generator) -> None:
        super().__init__()
        dtype = config.numpy_dtype
        self.token_embedding = Embedding(config.vocab_size, config.d_model, dtype)
        self.position_embedding = None
        if config.positional != "rope":
            positional_class = {"learned": LearnedPositionalEmbedding,
                                "sinusoidal": SinusoidalPositionalEncoding}[config.positional]
            self.position_embedding = positional_class(config.max_seq_len, config.d_model, dtype)
        self.dropout = Dropout(config.dropout, rng)
        self.blocks = [DecoderBlock(config, rng) for _ in range(config.n_layers)]
        self.final_norm = make_norm(config) if config.norm_first else None
        # Forward passes so far: every pass overwrites the layers' caches, so a model can tell whether
        # they still hold the pass its pending loss() made (TransformerLM.backward).
        self.passes = 0

    def forward(self, ids: np.ndarray, positions: np.ndarray | None = None, kv_caches: list[KVCache] | None = None,
                key_padding: np.ndarray | None = None) -> np.ndarray:
        """ids: (B, T). positions: (T,) or (B, T), default 0..T-1. positions, kv_caches (one KVCache per
        block) and key_padding (B, T) serve incremental decoding; see CausalSelfAttention.forward."""
        self.passes += 1
        x = self.token_embedding.forward(ids)
        if self.position_embedding is not None:
            table_positions = array_module(ids).arange(ids.shape[1]) if positions is None else positions
            x = x + self.position_embedding.forward(table_positions)
        x = self.dropout.forward(x)
        for index, block in enumerate(self.blocks):
            x = block.forward(x, kv_cache=None if kv_caches is None else kv_caches[index], key_padding=key_padding,
                              positions=positions)
        return x if self.final_norm is None else self.final_norm.forward(x)

    def backward(self, dout: np.ndarray) -> None:
        """dout (B, T, C): adds the gradients of every parameter (the ids have none)."""
        if self.final_norm is not None:
            dout = self.final_norm.backward(dout)
        for block in reversed(self.blocks):
            dout = block.backward(dout)
        dout = self.dropout.backward(dout)
        if self.position_embedding is not None:
            self.position_embedding.backward(dout)
        self.token_embedding.backward(dout)

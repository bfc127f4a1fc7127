"""The decoder stack: embeddings in, N residual blocks of attention and feed-forward, hidden states out."""
import numpy as np

from attention import CausalSelfAttention
from feed_forward import FeedForward
from layer_norm import LayerNorm, residual_backward, residual_forward
from module import Dropout, Embedding, Module
from positional_encoding import LearnedPositionalEmbedding, SinusoidalPositionalEncoding
from sparse_attention import make_pattern


class DecoderBlock(Module):
    """x: (B, T, C) -> (B, T, C): attention then feed-forward, each inside a residual connection
    with a LayerNorm, post-LN (norm_first=False) or pre-LN (norm_first=True); see layer_norm.py."""

    def __init__(self, config, rng):
        super().__init__()
        dtype = config.numpy_dtype
        self.norm_first = config.norm_first
        self.attention = CausalSelfAttention(config.d_model, config.n_heads, config.dropout, rng, dtype,
                                             pattern=make_pattern(config))
        self.norm1 = LayerNorm(config.d_model, config.layer_norm_eps, dtype)
        self.feed_forward = FeedForward(config.d_model, config.d_ff, config.activation,
                                        config.dropout, rng, dtype)
        self.norm2 = LayerNorm(config.d_model, config.layer_norm_eps, dtype)

    def forward(self, x, kv_cache=None, key_padding=None, positions=None):
        x = residual_forward(x, self.attention, self.norm1, self.norm_first,
                             kv_cache=kv_cache, key_padding=key_padding, positions=positions)
        return residual_forward(x, self.feed_forward, self.norm2, self.norm_first)

    def backward(self, dout):
        dout = residual_backward(dout, self.feed_forward, self.norm2, self.norm_first)
        return residual_backward(dout, self.attention, self.norm1, self.norm_first)


class Decoder(Module):
    """ids: (B, T) -> hidden states (B, T, C).

    token embedding + positions -> dropout -> N DecoderBlocks -> final LayerNorm (pre-LN only: there
    the last block's output has not been normalized yet; post-LN blocks already end in a LayerNorm).
    """

    def __init__(self, config, rng):
        super().__init__()
        dtype = config.numpy_dtype
        self.token_embedding = Embedding(config.vocab_size, config.d_model, dtype)
        positional_class = {"learned": LearnedPositionalEmbedding,
                            "sinusoidal": SinusoidalPositionalEncoding}[config.positional]
        self.position_embedding = positional_class(config.max_seq_len, config.d_model, dtype)
        self.dropout = Dropout(config.dropout, rng)
        self.blocks = [DecoderBlock(config, rng) for _ in range(config.n_layers)]
        self.final_norm = LayerNorm(config.d_model, config.layer_norm_eps, dtype) if config.norm_first else None
        # Forward passes so far: every pass overwrites the layers' caches, so a model can tell whether
        # they still hold the pass its pending loss() made (TransformerLM.backward).
        self.passes = 0

    def forward(self, ids, positions=None, kv_caches=None, key_padding=None):
        """ids: (B, T). positions: (T,) or (B, T), default 0..T-1. positions, kv_caches (one KVCache per
        block) and key_padding (B, T) serve incremental decoding; see CausalSelfAttention.forward."""
        self.passes += 1
        embedded_positions = np.arange(ids.shape[1]) if positions is None else positions
        x = self.token_embedding.forward(ids) + self.position_embedding.forward(embedded_positions)
        x = self.dropout.forward(x)
        for index, block in enumerate(self.blocks):
            x = block.forward(x, kv_cache=None if kv_caches is None else kv_caches[index], key_padding=key_padding,
                              positions=positions)
        return x if self.final_norm is None else self.final_norm.forward(x)

    def backward(self, dout):
        if self.final_norm is not None:
            dout = self.final_norm.backward(dout)
        for block in reversed(self.blocks):
            dout = block.backward(dout)
        dout = self.dropout.backward(dout)
        self.position_embedding.backward(dout)
        self.token_embedding.backward(dout)

"""Multi-head causal self-attention, batched over heads (no Python loop over heads or positions).

One kernel, `attend`, computes softmax(q k^T) v for any arrangement of queries and keys and any mask.
An AttentionPattern decides which keys each query may see and arranges queries and keys for the
kernel; the base class here is full causal attention, sparse_attention.py holds the sparse patterns.
Long sequences run full causal attention in a TiledLayout: tiles of queries against the keys they may see,
so neither the masked half nor any (T, T) matrix is computed.
"""
from __future__ import annotations

import math
from collections import namedtuple
from types import ModuleType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from device import array_module, random_generator
from module import Dropout, Module, linear_backward, linear_forward
from positional_encoding import apply_rope, apply_rope_backward, rope_tables
from precision import matmul

# Blocked scores get a large negative finite value instead of -inf: exp() still turns them into exact
# zeros, but a query whose keys are all blocked (a left-padding position) gets a uniform row instead
# of 0/0 = NaN, which would otherwise leak into later layers through 0 * NaN.
MASKED_SCORE = -1e30

# Renormalizing span-masked weights divides by their sum plus this (the adaptive-span reference's value),
# so a row whose mask removed every weight gives zeros instead of 0/0.
RENORMALIZATION_EPS = 1e-8

# What attend_backward needs from attend. dropout_mask: the mask this call drew (None without dropout),
# kept here because one Dropout may serve several head groups of a layer.
KernelCache = namedtuple("KernelCache", "scaled_queries keys values probs span_mask norms weights "
                                        "dropped_weights dropout_mask")


def softmax(scores: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, computed in place (scores is overwritten and
    returned): subtracting the row maximum keeps exp() <= 1. Entries at -inf (masked) come out exactly 0."""
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def softmax_backward(dprobs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Jacobian-vector product of softmax, in place on dprobs: ds_j = p_j (dp_j - sum_k dp_k p_k).
    einsum forms the row sums sum_k dp_k p_k without a (..., T, Tk) temporary."""
    dprobs -= np.einsum("...ij,...ij->...i", dprobs, probs)[..., None]
    dprobs *= probs
    return dprobs


def join_groups(x: np.ndarray, n_kv_heads: int) -> np.ndarray:
    """(B, H, ..., T, X) -> (B, n_kv_heads, ..., G T, X) with G = H / n_kv_heads: the G query heads that share a
    key/value head (grouped-query attention) stacked as the rows of one matrix, so that one product per key/value
    head serves them all and no key or value is repeated. The identity when every head has its own keys."""
    B, H = x.shape[:2]
    if H == n_kv_heads:
        return x
    grouped = np.moveaxis(x.reshape(B, n_kv_heads, H // n_kv_heads, *x.shape[2:]), 2, -3)  # (B, KV, ..., G, T, X)
    return grouped.reshape(*grouped.shape[:-3], -1, x.shape[-1])


def split_groups(x: np.ndarray, n_heads: int) -> np.ndarray:
    """(B, n_kv_heads, ..., G T, X) -> (B, n_heads, ..., T, X): the inverse of join_groups."""
    B, n_kv_heads = x.shape[:2]
    if n_kv_heads == n_heads:
        return x
    grouped = x.reshape(*x.shape[:-2], n_heads // n_kv_heads, -1, x.shape[-1])  # (B, KV, ..., G, T, X)
    return np.moveaxis(grouped, -3, 2).reshape(B, n_heads, *grouped.shape[2:-3], *grouped.shape[-2:])


def attend(scaled_queries: np.ndarray, keys: np.ndarray, values: np.ndarray, blocked: np.ndarray, dropout: Dropout,
           span_mask: np.ndarray | None = None) -> tuple[np.ndarray, KernelCache]:
    """The attention kernel: out = dropout(softmax(q k^T, blocked pairs excluded)) v.

    scaled_queries: (B, H, ..., Tq, D), already multiplied by 1 / sqrt(D); keys, values: (B, KV, ..., Tk, D), where
    KV divides H and query head h uses key/value head h // (H / KV) (grouped-query attention; KV = H: each its own);
    blocked: bool broadcastable to (B, H, ..., Tq, Tk), True where a query may not see a key.
    span_mask: None, or weights in [0, 1] broadcastable to (..., Tq, Tk) that multiply the attention
    weights, which are then renormalized to sum to 1 (adaptive span; Sukhbaatar et al. 2019).
    dropout: the Dropout for the attention weights. Returns out (B, H, ..., Tq, D) and the cache for attend_backward.
    """
    cache = attention_weights(scaled_queries, keys, values, blocked, dropout, span_mask)
    return weighted_values(cache.dropped_weights, values), cache


def weighted_values(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """weights (B, H, ..., Tq, Tk) @ values (B, KV, ..., Tk, D) -> (B, H, ..., Tq, D), query head h reading
    key/value head h // (H / KV)."""
    return split_groups(matmul(join_groups(weights, values.shape[1]), values), weights.shape[1])


def attention_weights(scaled_queries: np.ndarray, keys: np.ndarray, values: np.ndarray, blocked: np.ndarray,
                      dropout: Dropout, span_mask: np.ndarray | None = None) -> KernelCache:
    """`attend` without its last product: the cache attend_backward needs, the weights (dropped out) included.
    A tile's backward recomputes this alone, since it needs the weights but not the output."""
    # (B, H, ..., Tq, Tk): every mask below is written per query head.
    scores = split_groups(matmul(join_groups(scaled_queries, keys.shape[1]), keys.swapaxes(-1, -2)),
                          scaled_queries.shape[1])
    np.copyto(scores, MASKED_SCORE, where=blocked)
    probs = softmax(scores)                                              # rows sum to 1
    weights, norms = probs, None
    if span_mask is not None:
        weights = probs * span_mask
        norms = weights.sum(axis=-1, keepdims=True) + RENORMALIZATION_EPS
        weights /= norms
    dropped_weights = dropout.forward(weights)
    return KernelCache(scaled_queries, keys, values, probs, span_mask, norms, weights, dropped_weights,
                       dropout.scaled_mask)


def attend_backward(dout: np.ndarray, cache: KernelCache
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """dout (B, H, ..., Tq, D) -> gradients of `attend` with respect to scaled_queries, keys, values and the
    span mask (None when there was none). A key/value head shared by a group of query heads sums their gradients,
    inside the products over the joined rows."""
    scaled_queries, keys, values, probs, span_mask, norms, weights, dropped_weights, dropout_mask = cache
    n_heads, n_kv_heads = scaled_queries.shape[1], keys.shape[1]
    joined_dout = join_groups(dout, n_kv_heads)
    dvalues = matmul(join_groups(dropped_weights, n_kv_heads).swapaxes(-1, -2), joined_dout)  # (B, KV, ..., Tk, D)
    dweights = split_groups(matmul(joined_dout, values.swapaxes(-1, -2)), n_heads)           # (B, H, ..., Tq, Tk)
    if dropout_mask is not None:
        dweights *= dropout_mask
    dprobs, dspan_mask = dweights, None
    if span_mask is not None:
        # weights = q / n with q = p m and n = sum(q) + eps:  dq_j = (dweights_j - sum_k dweights_k weights_k) / n.
        dmasked = (dweights - np.sum(dweights * weights, axis=-1, keepdims=True)) / norms
        dprobs, dspan_mask = dmasked * span_mask, dmasked * probs
    dscores = join_groups(softmax_backward(dprobs, probs), n_kv_heads)   # blocked entries stay 0
    return (split_groups(matmul(dscores, keys), n_heads),
            matmul(dscores.swapaxes(-1, -2), join_groups(scaled_queries, n_kv_heads)), dvalues, dspan_mask)


def causal_blocked(query_positions: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
    """The rule of full causal attention: a query sees every key at or before its own position."""
    return key_positions > query_positions


class Layout(Protocol):
    """How a head group arranges queries and keys for the kernel (DenseLayout here, the blocked ones in
    sparse_attention.py): positions shaped to broadcast against its scores, and the maps in and out of it."""

    query_positions: np.ndarray
    key_positions: np.ndarray

    def gather_queries(self, x: np.ndarray) -> np.ndarray: ...
    def gather_keys(self, x: np.ndarray) -> np.ndarray: ...
    def scatter_queries(self, grouped: np.ndarray) -> np.ndarray: ...
    def scatter_keys(self, grouped: np.ndarray) -> np.ndarray: ...


class DenseLayout:
    """Every query against every key: scores (B, h, Tq, Tk).

    Positions (Tq,) and (Tk,), or (B, Tq) and (B, Tk) when rows differ (a left-padded KV cache);
    -1 marks a slot with no key. Every layout stores them shaped to broadcast against its scores,
    with the head axis at 1, so that one rule written on positions masks any layout.
    """

    def __init__(self, query_positions: np.ndarray, key_positions: np.ndarray) -> None:
        self.query_positions = np.atleast_2d(query_positions)[:, None, :, None]   # (B or 1, 1, Tq, 1)
        self.key_positions = np.atleast_2d(key_positions)[:, None, None, :]       # (B or 1, 1, 1, Tk)

    def gather_queries(self, x: np.ndarray) -> np.ndarray:
        """(B, h, T, D) -> the layout's arrangement; identity here."""
        return x

    gather_keys = scatter_queries = scatter_keys = gather_queries


def sequence_layout(seq_len: int, xp: ModuleType = np) -> DenseLayout:
    """The dense layout of a plain forward pass: queries and keys at positions 0..seq_len-1, arrays of xp (the
    array module of the scores it will mask; every layout takes one)."""
    positions = xp.arange(seq_len)
    return DenseLayout(positions, positions)


class TiledLayout:
    """Queries in tiles of `tile_size` rows, each against the keys it may see: from its first query's earliest
    key (0, or the start of a window of the `window` most recent keys) to its last query. The rules are causal,
    so the tiles above the diagonal (and left of a window's band) are never computed, and no (T, T) matrix
    exists: scores (B, h, tile_size, <= T) at a time. Each tile holds whole rows of the score matrix, so the
    kernel's ordinary softmax is exact per tile (no online softmax needed); the backward recomputes a tile's
    weights unless they were kept. `tiles`: (query slice, key slice, the tile's DenseLayout) per tile.
    """

    def __init__(self, seq_len: int, tile_size: int, window: int | None = None, xp: ModuleType = np) -> None:
        positions = xp.arange(seq_len)
        self.tiles = []
        self.num_scores = 0  # per batch row and head, over all tiles
        for start in range(0, seq_len, tile_size):
            stop = min(start + tile_size, seq_len)
            first_key = 0 if window is None else max(0, start - window + 1)
            tile = DenseLayout(positions[start:stop], positions[first_key:stop])
            self.tiles.append((slice(start, stop), slice(first_key, stop), tile))
            self.num_scores += (stop - start) * (stop - first_key)


def tile_dropout(dropout: Dropout, seed: int, tile: int, xp: ModuleType) -> Dropout:
    """A Dropout like `dropout` that draws xp arrays from a generator seeded by (seed, tile): the backward's
    recomputation of a tile draws the very mask its forward drew, whatever ran in between."""
    copy = Dropout(dropout.p, random_generator(xp, [seed, tile]))
    copy.training = dropout.training
    return copy


# What the backward of a tiled head group needs: the kernel's inputs, the group's rule, the Dropout and the
# seed of its tiles' generators, and the tiles' kernel caches when they were small enough to keep (else None:
# the backward recomputes them tile by tile).
TiledCache = namedtuple("TiledCache", "scaled_queries keys values blocked dropout seed tile_caches")

# Tile size and the sequence length from which full causal attention runs tiled: below it one dense (T, T)
# score matrix costs as little (GPT-2 small's layer at T=256) or less. Measured with `python bench.py --only tiles`
# (README, "Tiled attention"): tiles of 64 and 128 tie, 256 is slower.
TILE_SIZE = 128
TILED_FROM = 512
# In training, a tiled head group keeps its tiles' weights for the backward while they hold at most this many
# scores (B * heads * scores per head: 2^24 float32 are 64 MiB), which saves recomputing them; longer sequences
# recompute, so their memory stays O(T * tile).
KEPT_SCORES = 2**24


# A slice of heads, the rule `blocked(query_positions, key_positions)` they follow, and `layout(seq_len, xp)`,
# the arrangement in which they compute only the blocks the rule may allow (positions as arrays of xp).
HeadGroup = namedtuple("HeadGroup", "heads blocked layout")


def key_heads(heads: slice, group_size: int) -> slice:
    """The key/value heads that query heads `heads` use when each serves group_size consecutive query heads
    (the config makes every head group a whole number of such groups)."""
    return slice(heads.start // group_size, heads.stop // group_size)


class AttentionPattern(Module):
    """Full causal attention, and the base class of the sparse patterns in sparse_attention.py.

    A pattern splits the heads into groups (`head_groups`); every group runs the same kernel, `attend`,
    in its own layout. `window`: the most keys any query looks back at (its own included), None when
    unbounded; a KV cache then needs only that many slots, reused in turn.
    """

    window = None
    # Full causal attention runs in tiles of tile_size queries from tiled_from tokens on (None: never), keeping
    # the tiles' weights for the backward up to kept_scores scores (KEPT_SCORES).
    tile_size, tiled_from, kept_scores = TILE_SIZE, TILED_FROM, KEPT_SCORES

    def __init__(self) -> None:
        super().__init__()
        self.cache = None

    def head_groups(self, n_heads: int) -> list[HeadGroup]:
        """The head groups of this pattern for n_heads heads: here one, all heads, full causal attention."""
        return [HeadGroup(slice(0, n_heads), causal_blocked, self.causal_layout)]

    def uses_tiles(self, seq_len: int) -> bool:
        """Whether full and windowed attention over seq_len tokens run in a TiledLayout."""
        return self.tiled_from is not None and seq_len >= self.tiled_from

    def causal_layout(self, seq_len: int, xp: ModuleType) -> Layout | TiledLayout:
        """Full causal attention's layout: tiled from `tiled_from` tokens on, dense below."""
        if self.uses_tiles(seq_len):
            return TiledLayout(seq_len, self.tile_size, xp=xp)
        return sequence_layout(seq_len, xp)

    def span_mask(self, layout: Layout) -> np.ndarray | None:
        """Weights broadcastable to the layout's scores that multiply the attention weights; None: no
        such mask (only the adaptive span has one)."""
        return None

    def span_mask_backward(self, dspan_mask: np.ndarray, span_mask: np.ndarray | None) -> None:
        """Accumulate the gradient of the pattern's parameters from d span_mask."""

    def forward(self, scaled_queries: np.ndarray, keys: np.ndarray, values: np.ndarray, dropout: Dropout,
                query_positions: np.ndarray | None = None, key_positions: np.ndarray | None = None) -> np.ndarray:
        """scaled_queries: (B, H, Tq, D); keys, values: (B, KV, Tk, D), KV dividing H -> (B, H, Tq, D).

        Without positions the tokens sit at 0..T-1 (Tq == Tk) and each group uses its own layout. With
        query_positions (B, Tq) and key_positions (B, Tk) (a KV cache; -1 at padding and empty slots)
        every group attends densely, by the same rules.
        """
        outputs, self.cache = [], []
        group_size = scaled_queries.shape[1] // keys.shape[1]
        for group in self.head_groups(scaled_queries.shape[1]):
            group_keys = key_heads(group.heads, group_size)
            if query_positions is None:
                layout = group.layout(scaled_queries.shape[2], array_module(scaled_queries))
            else:
                layout = DenseLayout(query_positions, key_positions)
            if isinstance(layout, TiledLayout):
                outputs.append(self.attend_tiles(group, group_keys, layout, scaled_queries, keys, values, dropout))
                continue
            blocked = group.blocked(layout.query_positions, layout.key_positions) | (layout.key_positions < 0)
            out, kernel_cache = attend(layout.gather_queries(scaled_queries[:, group.heads]),
                                       layout.gather_keys(keys[:, group_keys]),
                                       layout.gather_keys(values[:, group_keys]), blocked, dropout,
                                       self.span_mask(layout))
            outputs.append(layout.scatter_queries(out))
            self.cache.append((group.heads, layout, kernel_cache))
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=1)

    def backward(self, dout: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """dout (B, H, T, D) -> gradients with respect to scaled_queries (B, H, T, D), keys and values (B, KV, T, D)."""
        dscaled_queries, dkeys, dvalues = [], [], []
        for heads, layout, kernel_cache in self.cache:
            if isinstance(layout, TiledLayout):
                for grads, group_grad in zip((dscaled_queries, dkeys, dvalues),
                                             self.attend_tiles_backward(dout[:, heads], layout, kernel_cache)):
                    grads.append(group_grad)
                continue
            dgroup_queries, dgroup_keys, dgroup_values, dspan_mask = attend_backward(
                layout.gather_queries(dout[:, heads]), kernel_cache)
            self.span_mask_backward(dspan_mask, kernel_cache.span_mask)
            dscaled_queries.append(layout.scatter_queries(dgroup_queries))
            dkeys.append(layout.scatter_keys(dgroup_keys))
            dvalues.append(layout.scatter_keys(dgroup_values))
        if len(self.cache) == 1:  # one head group (full attention): nothing to join, no copy
            return dscaled_queries[0], dkeys[0], dvalues[0]
        return tuple(np.concatenate(grads, axis=1) for grads in (dscaled_queries, dkeys, dvalues))

    def tile_weights(self, index: int, rows: slice, keys: slice, tile: DenseLayout, cache: TiledCache
                     ) -> KernelCache:
        """The kernel's weights for one tile of a TiledLayout (queries `rows` against `keys`), drawn with
        the tile's own dropout generator: the same in the forward and in the backward's recomputation (without
        dropout, the layer's own Dropout, which draws nothing)."""
        dropout = cache.dropout
        if dropout.draws:
            dropout = tile_dropout(dropout, cache.seed, index, array_module(cache.keys))
        return attention_weights(cache.scaled_queries[:, :, rows], cache.keys[:, :, keys], cache.values[:, :, keys],
                                 cache.blocked(tile.query_positions, tile.key_positions), dropout,
                                 self.span_mask(tile))

    def attend_tiles(self, group: HeadGroup, group_keys: slice, layout: TiledLayout, scaled_queries: np.ndarray,
                     keys: np.ndarray, values: np.ndarray, dropout: Dropout) -> np.ndarray:
        """One head group's attention in a TiledLayout, tile by tile: queries (B, h, T, D) and the group's key/value
        heads `group_keys` of keys, values (B, KV, T, D) -> (B, h, T, D).
        Keeps the inputs (a TiledCache) and, in training while they hold at most kept_scores scores, the tiles'
        kernel caches."""
        # One draw from the model's generator per group seeds every tile's mask.
        seed = int(dropout.rng.integers(2**63)) if dropout.draws else 0
        group_queries = scaled_queries[:, group.heads]
        keep = self.training and math.prod(group_queries.shape[:2]) * layout.num_scores <= self.kept_scores
        cache = TiledCache(group_queries, keys[:, group_keys], values[:, group_keys],
                           group.blocked, dropout, seed, [] if keep else None)
        out = np.empty_like(cache.scaled_queries)
        for index, (rows, tile_keys, tile) in enumerate(layout.tiles):
            weights = self.tile_weights(index, rows, tile_keys, tile, cache)
            out[:, :, rows] = weighted_values(weights.dropped_weights, weights.values)
            if keep:
                cache.tile_caches.append(weights)
        self.cache.append((group.heads, layout, cache))
        return out

    def attend_tiles_backward(self, dout: np.ndarray, layout: TiledLayout, cache: TiledCache
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """dout (B, h, T, D) -> gradients of attend_tiles with respect to scaled_queries (B, h, T, D) and the
        group's keys and values (B, kv, T, D); a key seen by several tiles adds their gradients."""
        dscaled_queries = np.empty_like(cache.scaled_queries)
        dkeys, dvalues = np.zeros_like(cache.keys), np.zeros_like(cache.values)
        for index, (rows, tile_keys, tile) in enumerate(layout.tiles):
            if cache.tile_caches is None:
                weights = self.tile_weights(index, rows, tile_keys, tile, cache)
            else:
                weights = cache.tile_caches[index]
            dtile_queries, dtile_keys, dtile_values, dspan_mask = attend_backward(dout[:, :, rows], weights)
            self.span_mask_backward(dspan_mask, weights.span_mask)
            dscaled_queries[:, :, rows] = dtile_queries
            dkeys[:, :, tile_keys] += dtile_keys
            dvalues[:, :, tile_keys] += dtile_values
        return dscaled_queries, dkeys, dvalues

    def dense_weights(self) -> np.ndarray:
        """The attention weights (B, H, Tq, Tk) of the last forward pass, which must have run with
        positions (densely): for pictures."""
        return np.concatenate([kernel_cache.weights for _, _, kernel_cache in self.cache], axis=1)


class CausalSelfAttention(Module):
    """x: (B, T, C) -> (B, T, C), with n_heads query heads and n_kv_heads key/value heads (default n_heads;
    fewer is grouped-query attention, each key/value head serving n_heads / n_kv_heads consecutive query heads),
    each head_dim wide (default C / n_heads).

    Parameters: W_qkv (C, (H + 2 KV) D) and b_qkv, the fused query/key/value projection, whose output columns are
    [queries: H heads | keys: KV heads | values: KV heads], each head D contiguous columns; W_out (H D, C) and
    b_out (C,), the output projection. bias=False leaves out both biases; qkv_bias (default: bias) decides b_qkv
    alone. rope_theta: rotate queries and keys by their positions (RoPE, positional_encoding.rope_tables) with this
    base; None: no rotation. pattern: which keys each query sees (an AttentionPattern; default full causal).
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float, rng: np.random.Generator, dtype: npt.DTypeLike,
                 pattern: AttentionPattern | None = None, bias: bool = True, n_kv_heads: int | None = None,
                 head_dim: int | None = None, qkv_bias: bool | None = None, rope_theta: float | None = None) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.head_dim = d_model // n_heads if head_dim is None else head_dim
        self.rope_theta = rope_theta
        qkv_width = (n_heads + 2 * self.n_kv_heads) * self.head_dim
        self.add_parameter("W_qkv", np.zeros((d_model, qkv_width), dtype=dtype))
        if bias if qkv_bias is None else qkv_bias:
            self.add_parameter("b_qkv", np.zeros(qkv_width, dtype=dtype))
        self.add_parameter("W_out", np.zeros((n_heads * self.head_dim, d_model), dtype=dtype))
        if bias:
            self.add_parameter("b_out", np.zeros(d_model, dtype=dtype))
        self.pattern = AttentionPattern() if pattern is None else pattern
        self.attention_dropout = Dropout(dropout, rng)
        self.residual_dropout = Dropout(dropout, rng)
        self.cache = None

    def split_heads(self, qkv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, T, (H + 2 KV) D) -> queries (B, H, T, D), keys and values (B, KV, T, D)."""
        B, T, _ = qkv.shape
        heads = qkv.reshape(B, T, self.n_heads + 2 * self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        H, KV = self.n_heads, self.n_kv_heads
        return heads[:, :H], heads[:, H:H + KV], heads[:, H + KV:]

    def merge_heads(self, dqueries: np.ndarray, dkeys: np.ndarray, dvalues: np.ndarray) -> np.ndarray:
        """The inverse of split_heads: (B, H, T, D), (B, KV, T, D), (B, KV, T, D) -> (B, T, (H + 2 KV) D)."""
        B, H, T, D = dqueries.shape
        dqkv = array_module(dqueries).empty((B, T, H + 2 * self.n_kv_heads, D), dtype=dqueries.dtype)
        dqkv[:, :, :H] = dqueries.transpose(0, 2, 1, 3)
        dqkv[:, :, H:H + self.n_kv_heads] = dkeys.transpose(0, 2, 1, 3)
        dqkv[:, :, H + self.n_kv_heads:] = dvalues.transpose(0, 2, 1, 3)
        return dqkv.reshape(B, T, -1)

    def forward(self, x: np.ndarray, kv_cache: KVCache | None = None, key_padding: np.ndarray | None = None,
                positions: np.ndarray | None = None) -> np.ndarray:
        """x: (B, T, C) -> (B, T, C).

        For inference (incremental decoding): kv_cache, a KVCache with the keys, values and positions of
        earlier tokens, which the T new tokens follow; key_padding (B, T), True at padded new tokens
        (left-padded prompts), which no query may attend to; positions (T,) or (B, T) of the new tokens
        (default: right after the cache's). With any of them the masks come from these positions;
        without, the tokens sit at 0..T-1 and the pattern computes only the blocks it needs. RoPE rotates
        by the same positions, so a row of a left-padded batch computes as if alone.
        """
        B, T, C = x.shape
        p = self.params
        qkv = linear_forward(x, p["W_qkv"], p.get("b_qkv"))                  # (B, T, (H + 2 KV) D)
        queries, keys, values = self.split_heads(qkv)                     # (B, H or KV, T, D)
        plain = kv_cache is None and key_padding is None and positions is None
        if not plain:
            if positions is None:
                positions = array_module(x).arange(T) + (0 if kv_cache is None else kv_cache.length)
            query_positions = np.broadcast_to(positions, (B, T))
        rope = None
        if self.rope_theta is not None:
            rope_positions = array_module(x).arange(T) if plain else query_positions
            rope = rope_tables(rope_positions, self.head_dim, self.rope_theta, x.dtype)
            queries, keys = apply_rope(queries, *rope), apply_rope(keys, *rope)
        # Scaling the queries (T x D numbers) is cheaper than scaling the scores (T x Tk).
        scaled_queries = queries * (1.0 / math.sqrt(self.head_dim))
        if plain:
            heads_out = self.pattern.forward(scaled_queries, keys, values, self.attention_dropout)
        else:
            if key_padding is not None:
                query_positions = np.where(key_padding, -1, query_positions)  # a padding token is no one's key
            key_positions = query_positions
            if kv_cache is not None:
                keys, values, key_positions = kv_cache.append(keys, values, query_positions)
            heads_out = self.pattern.forward(scaled_queries, keys, values, self.attention_dropout,
                                             query_positions, key_positions)  # (B, H, T, D)
        merged = heads_out.transpose(0, 2, 1, 3).reshape(B, T, -1)        # heads side by side: (B, T, H D)
        out = linear_forward(merged, p["W_out"], p.get("b_out"))
        self.cache = (x, merged, rope)
        return self.residual_dropout.forward(out)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (B, T, C) -> dx (B, T, C); adds the gradients of the projections' parameters."""
        x, merged, rope = self.cache
        B, T, _ = x.shape
        p, g = self.params, self.grads
        dout = self.residual_dropout.backward(dout)
        dmerged = linear_backward(dout, merged, p["W_out"], g["W_out"], g.get("b_out"))
        dheads_out = dmerged.reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        dscaled_queries, dkeys, dvalues = self.pattern.backward(dheads_out)
        dqueries = dscaled_queries * (1.0 / math.sqrt(self.head_dim))
        if rope is not None:
            dqueries, dkeys = apply_rope_backward(dqueries, *rope), apply_rope_backward(dkeys, *rope)
        dqkv = self.merge_heads(dqueries, dkeys, dvalues)
        return linear_backward(dqkv, x, p["W_qkv"], g["W_qkv"], g.get("b_qkv"))


class KVCache:
    """The keys and values one attention layer has computed so far, with the position of each, so that
    a new token attends to the past without recomputing it: O(T * C) work per token instead of a whole
    forward pass.

    Buffers keys, values (B, KV, slots, D) (KV: the layer's key/value heads) and positions (B, slots); position -1
    marks a slot without a key (not filled yet, or a padding token). A plain cache starts empty and at least doubles
    its slots when full, up to `capacity`, so its memory follows the tokens actually appended, not the most that
    might come. A rolling cache, for a pattern that never looks back more than `capacity` keys (a sliding
    window), holds `capacity` slots from the start and reuses its oldest once full, so decoding goes on
    in constant memory.
    """

    def __init__(self, batch_size: int, n_kv_heads: int, capacity: int, head_dim: int, dtype: npt.DTypeLike,
                 rolling: bool = False, xp: ModuleType = np) -> None:
        slots = capacity if rolling else 0
        self.keys = xp.zeros((batch_size, n_kv_heads, slots, head_dim), dtype=dtype)  # on the model's device
        self.values = np.zeros_like(self.keys)
        self.positions = xp.full((batch_size, slots), -1, dtype=np.int64)
        self.capacity = capacity
        self.rolling = rolling
        self.length = 0  # tokens appended so far

    def grow(self, slots: int) -> None:
        """Move the filled slots into buffers of `slots` slots."""
        xp = array_module(self.keys)
        keys = xp.zeros(self.keys.shape[:2] + (slots,) + self.keys.shape[3:], dtype=self.keys.dtype)
        values = np.zeros_like(keys)
        positions = xp.full((len(self.positions), slots), -1, dtype=np.int64)
        keys[:, :, :self.length] = self.keys[:, :, :self.length]
        values[:, :, :self.length] = self.values[:, :, :self.length]
        positions[:, :self.length] = self.positions[:, :self.length]
        self.keys, self.values, self.positions = keys, values, positions

    def append(self, keys: np.ndarray, values: np.ndarray, positions: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Store keys, values (B, KV, T, D) of the tokens at positions (B, T). Returns the keys, values
        (B, KV, Tk, D) and positions (B, Tk) that the new tokens' queries may need (in any order)."""
        T, capacity = keys.shape[2], self.capacity
        if self.rolling:
            # The new queries need the stored keys and each other's; afterwards the last `capacity` stay.
            needed = (np.concatenate([self.keys, keys], axis=2), np.concatenate([self.values, values], axis=2),
                      np.concatenate([self.positions, positions], axis=1))
            slots = array_module(keys).arange(self.length, self.length + T)[-capacity:] % capacity
            self.keys[:, :, slots] = keys[:, :, -capacity:]
            self.values[:, :, slots] = values[:, :, -capacity:]
            self.positions[:, slots] = positions[:, -capacity:]
            self.length += T
            return needed
        end = self.length + T
        if end > capacity:
            raise ValueError(f"KV cache is full: {end} positions requested, capacity {capacity}")
        if end > self.keys.shape[2]:
            # Doubling keeps the copying amortized O(1) per token.
            self.grow(min(capacity, max(end, 2 * self.keys.shape[2])))
        self.keys[:, :, self.length:end] = keys
        self.values[:, :, self.length:end] = values
        self.positions[:, self.length:end] = positions
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end], self.positions[:, :end]

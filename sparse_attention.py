"""Sparse attention patterns and the adaptive attention span, selected in TransformerConfig.

    attention="sliding", window=W    each query sees its W most recent keys (its own included)
    attention="strided", stride=l    Child et al. 2019: half the heads local, half every l-th key back
    attention="fixed", stride=l, summary=c
                                     Child et al. 2019: half the heads their own block of l positions,
                                     half the last c positions of every block
    adaptive_span=True, max_span=S   Sukhbaatar et al. 2019: every head learns how far back it looks

Every pattern is a rule on positions, `blocked(query_positions, key_positions)`, plus a layout that
arranges queries and keys in blocks so that only the pairs the rule may allow are computed; the kernel
(`attend` in attention.py) is the same for all. With positions given (a KV cache) the same rules mask a
dense computation, which the tests use as the reference.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from attention import AttentionPattern, HeadGroup, Layout, TiledLayout, causal_blocked, sequence_layout
from device import array_module
from transformer_config import TransformerConfig

if TYPE_CHECKING:  # for the hints only: transformer_lm imports this module (through decoder.py)
    from transformer_lm import TransformerLM


def pad_sequence(x: np.ndarray, length: int) -> np.ndarray:
    """(B, h, T, D) -> (B, h, length, D), zeros after the T positions."""
    return np.pad(x, [(0, 0), (0, 0), (0, length - x.shape[2]), (0, 0)])


class BlockedLayout:
    """Queries in blocks of L = block_size; each block meets the keys of its own block and of the
    `lookback` blocks before it: scores (B, h, N, L, (lookback + 1) L) with N = ceil(T / L), instead
    of (B, h, T, T).

    The sequence is padded with zeros to N * L: padded keys come after every real query, so the
    causal rule blocks them; keys before position 0 get position -1 (no key); padded queries are dropped.
    """

    def __init__(self, seq_len: int, block_size: int, lookback: int, xp: ModuleType = np) -> None:
        self.seq_len, self.block_size, self.lookback = seq_len, block_size, lookback
        self.num_blocks = -(-seq_len // block_size)
        block_starts = xp.arange(self.num_blocks)[:, None] * block_size                 # (N, 1)
        query_positions = block_starts + xp.arange(block_size)                           # (N, L)
        key_positions = block_starts + xp.arange(-lookback * block_size, block_size)    # (N, (lookback + 1) L)
        self.query_positions = query_positions[None, None, :, :, None]
        self.key_positions = np.maximum(key_positions, -1)[None, None, :, None, :]

    def gather_queries(self, x: np.ndarray) -> np.ndarray:
        """(B, h, T, D) -> (B, h, N, L, D)."""
        B, h, _, D = x.shape
        return pad_sequence(x, self.num_blocks * self.block_size).reshape(B, h, self.num_blocks, self.block_size, D)

    def gather_keys(self, x: np.ndarray) -> np.ndarray:
        """(B, h, T, D) -> (B, h, N, (lookback + 1) L, D): blocks n - lookback, ..., n side by side."""
        blocks = self.gather_queries(x)
        earlier = [np.pad(blocks[:, :, :self.num_blocks - back], [(0, 0), (0, 0), (back, 0), (0, 0), (0, 0)])
                   for back in range(self.lookback, 0, -1)]
        return np.concatenate(earlier + [blocks], axis=3)

    def scatter_queries(self, grouped: np.ndarray) -> np.ndarray:
        """(B, h, N, L, D) -> (B, h, T, D), the inverse of gather_queries."""
        B, h, N, L, D = grouped.shape
        return grouped.reshape(B, h, N * L, D)[:, :, :self.seq_len]

    def scatter_keys(self, grouped: np.ndarray) -> np.ndarray:
        """(B, h, N, (lookback + 1) L, D) -> (B, h, T, D): a key seen from several blocks adds their gradients."""
        B, h, N, _, D = grouped.shape
        parts = grouped.reshape(B, h, N, self.lookback + 1, self.block_size, D)
        blocks = parts[:, :, :, self.lookback].copy()                                   # each block's own keys
        for back in range(1, self.lookback + 1):
            blocks[:, :, :N - back] += parts[:, :, back:, self.lookback - back]
        return self.scatter_queries(blocks)


def blocked_layout(seq_len: int, block_size: int, lookback: int, xp: ModuleType) -> Layout:
    """A BlockedLayout, or the plain dense one when a single block would cover the sequence."""
    if block_size >= seq_len:
        return sequence_layout(seq_len, xp)
    return BlockedLayout(seq_len, block_size, lookback, xp)


class ColumnLayout:
    """The sequence written as rows of `stride` positions and read by column: column c holds positions
    c, c + stride, c + 2 stride, ... Scores (B, h, stride, R, R) with R = ceil(T / stride): each query
    meets exactly the keys a multiple of `stride` away. Padding as in BlockedLayout."""

    def __init__(self, seq_len: int, stride: int, xp: ModuleType = np) -> None:
        self.seq_len, self.stride = seq_len, stride
        self.num_rows = -(-seq_len // stride)
        columns = xp.arange(self.num_rows * stride).reshape(self.num_rows, stride).T    # (stride, R)
        self.query_positions = columns[None, None, :, :, None]
        self.key_positions = columns[None, None, :, None, :]

    def gather_queries(self, x: np.ndarray) -> np.ndarray:
        """(B, h, T, D) -> (B, h, stride, R, D)."""
        B, h, _, D = x.shape
        rows = pad_sequence(x, self.num_rows * self.stride).reshape(B, h, self.num_rows, self.stride, D)
        return rows.swapaxes(2, 3)

    def scatter_queries(self, grouped: np.ndarray) -> np.ndarray:
        """(B, h, stride, R, D) -> (B, h, T, D); every position sits in exactly one column."""
        B, h, _, _, D = grouped.shape
        return grouped.swapaxes(2, 3).reshape(B, h, -1, D)[:, :, :self.seq_len]

    gather_keys, scatter_keys = gather_queries, scatter_queries


class SummaryLayout:
    """Queries in blocks of L = block_size; each block meets its own keys and the keys at
    `summary_positions` (K of them) that lie in earlier blocks: scores (B, h, N, L, L + K).

    All blocks share the summary part; summaries of a block's own or later blocks are marked -1 there,
    since its own ones are already among its own keys and later ones are in the future.
    """

    def __init__(self, seq_len: int, block_size: int, summary_positions: np.ndarray) -> None:
        self.blocks = BlockedLayout(seq_len, block_size, lookback=0, xp=array_module(summary_positions))
        self.summary_positions = summary_positions
        block_starts = self.blocks.query_positions[..., :1, :]                          # (1, 1, N, 1, 1)
        earlier_summaries = np.where(summary_positions < block_starts, summary_positions, -1)
        self.query_positions = self.blocks.query_positions
        self.key_positions = np.concatenate([self.blocks.key_positions, earlier_summaries], axis=-1)

    def gather_queries(self, x: np.ndarray) -> np.ndarray:
        """(B, h, T, D) -> (B, h, N, L, D)."""
        return self.blocks.gather_queries(x)

    def scatter_queries(self, grouped: np.ndarray) -> np.ndarray:
        """(B, h, N, L, D) -> (B, h, T, D)."""
        return self.blocks.scatter_queries(grouped)

    def gather_keys(self, x: np.ndarray) -> np.ndarray:
        """(B, h, T, D) -> (B, h, N, L + K, D)."""
        own = self.blocks.gather_keys(x)                                                # (B, h, N, L, D)
        summaries = x[:, :, self.summary_positions]                                     # (B, h, K, D)
        shared = np.broadcast_to(summaries[:, :, None], own.shape[:3] + summaries.shape[2:])
        return np.concatenate([own, shared], axis=3)

    def scatter_keys(self, grouped: np.ndarray) -> np.ndarray:
        """(B, h, N, L + K, D) -> (B, h, T, D); a summary key adds the gradients from every block."""
        own_size = self.blocks.block_size
        dx = self.blocks.scatter_keys(grouped[:, :, :, :own_size])
        dx[:, :, self.summary_positions] += grouped[:, :, :, own_size:].sum(axis=2)
        return dx


def window_group(heads: slice, window: int, pattern: AttentionPattern) -> HeadGroup:
    """Heads that see the `window` most recent keys, their own included: key j for query i when
    i - window < j <= i. Computed in the pattern's tiles along the band (long sequences: pattern.uses_tiles), or
    in blocks of `window` queries against their own block and the one before: O(T * window) time and memory."""
    def blocked(query_positions: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
        return causal_blocked(query_positions, key_positions) | (query_positions - key_positions >= window)

    def layout(seq_len: int, xp: ModuleType) -> Layout | TiledLayout:
        if pattern.uses_tiles(seq_len):
            return TiledLayout(seq_len, pattern.tile_size, window, xp)
        return blocked_layout(seq_len, window, lookback=1, xp=xp)

    return HeadGroup(heads, blocked, layout)


class SlidingWindow(AttentionPattern):
    """Local attention (Longformer, Mistral): every head of query i sees keys i - window < j <= i.

    Convention: `window` counts the query's own key, so window = 1 is the token alone and window >= T
    is full causal attention (Mistral's reference lets a token see window + 1 keys). At inference a
    rolling KV cache of `window` slots suffices, so generation can run past max_seq_len.
    """

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window

    def head_groups(self, n_heads: int) -> list[HeadGroup]:
        return [window_group(slice(0, n_heads), self.window, self)]


class Strided(AttentionPattern):
    """Child et al. 2019, the strided pattern, split across heads (their multi-head arrangement): the
    first half of the heads sees the `stride` most recent keys (i - stride < j <= i), the second half
    the keys a whole number of strides back (j <= i, (i - j) % stride == 0). Any earlier key is two
    hops away. (The paper's local set {i - stride, ..., i} has one key more, i - stride, which the
    second half sees anyway.) Cost O(T * (stride + T / stride)): O(T sqrt T) for stride ~ sqrt T.
    """

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def column_blocked(self, query_positions: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
        """The second half's rule: causal, and a whole number of strides back."""
        return causal_blocked(query_positions, key_positions) | ((query_positions - key_positions) % self.stride != 0)

    def column_layout(self, seq_len: int, xp: ModuleType) -> Layout:
        """The second half's layout: by column (ColumnLayout), or dense when one column covers the sequence."""
        return ColumnLayout(seq_len, self.stride, xp) if self.stride < seq_len else sequence_layout(seq_len, xp)

    def head_groups(self, n_heads: int) -> list[HeadGroup]:
        half = n_heads // 2
        return [window_group(slice(0, half), self.stride, self),
                HeadGroup(slice(half, n_heads), self.column_blocked, self.column_layout)]


class Fixed(AttentionPattern):
    """Child et al. 2019, the fixed pattern, split across heads: the first half of the heads sees the
    earlier keys of its own block of `stride` positions (j <= i, j // stride == i // stride); the second
    half sees the last `summary` positions of every block (the paper's c: j <= i, j % stride >= stride
    - summary), which carry each block's content to all later blocks.

    Every query of the second half also sees its own key: the first stride - summary positions come
    before any summary position and would otherwise have nothing to attend to.
    """

    def __init__(self, stride: int, summary: int) -> None:
        super().__init__()
        self.stride, self.summary = stride, summary

    def block_blocked(self, query_positions: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
        """The first half's rule: causal, within the query's own block of `stride` positions."""
        return causal_blocked(query_positions, key_positions) | (query_positions // self.stride
                                                                 != key_positions // self.stride)

    def summary_blocked(self, query_positions: np.ndarray, key_positions: np.ndarray) -> np.ndarray:
        """The second half's rule: causal, summary positions (the last `summary` of each block) and itself."""
        not_summary = key_positions % self.stride < self.stride - self.summary
        return causal_blocked(query_positions, key_positions) | (not_summary & (key_positions != query_positions))

    def block_layout(self, seq_len: int, xp: ModuleType) -> Layout:
        """The first half's layout: blocks of `stride` queries against their own block."""
        return blocked_layout(seq_len, self.stride, lookback=0, xp=xp)

    def summary_layout(self, seq_len: int, xp: ModuleType) -> Layout:
        """The second half's layout: each block against its own keys and the earlier summary positions."""
        if self.stride >= seq_len:
            return sequence_layout(seq_len, xp)
        # The last `summary` positions of every block, in order, cut at the sequence's end: counted here rather
        # than selected by a mask, whose size a GPU would have to report back.
        block_starts = xp.arange(0, seq_len, self.stride)[:, None]
        summaries = (block_starts + xp.arange(self.stride - self.summary, self.stride)).ravel()
        count = seq_len // self.stride * self.summary + max(0, seq_len % self.stride - (self.stride - self.summary))
        return SummaryLayout(seq_len, self.stride, summaries[:count])

    def head_groups(self, n_heads: int) -> list[HeadGroup]:
        half = n_heads // 2
        return [HeadGroup(slice(0, half), self.block_blocked, self.block_layout),
                HeadGroup(slice(half, n_heads), self.summary_blocked, self.summary_layout)]


class AdaptiveSpan(AttentionPattern):
    """Adaptive attention span (Sukhbaatar et al. 2019). Head h learns a span z_h in [0, max_span] and
    weighs the key at distance x = i - j by the soft mask m(x) = clamp((R + z_h - x) / R, 0, 1), a ramp
    of width R = ramp from 1 down to 0 past z_h; the masked weights are renormalized to sum to 1. As in
    the reference implementation the mask follows the softmax, and the parameter `span` (H,) holds
    z / max_span in [0, 1], starting at 0; after_step keeps it there after each optimizer step.

    Keys beyond ceil(max z) + R get weight 0, so each query computes only the `window` most recent keys
    (a sliding window of that size): the cost falls as the spans shrink.
    """

    def __init__(self, n_heads: int, max_span: int, ramp: int, loss_coefficient: float, dtype: npt.DTypeLike) -> None:
        super().__init__()
        self.max_span, self.ramp, self.loss_coefficient = max_span, ramp, loss_coefficient
        self.add_parameter("span", np.zeros(n_heads, dtype=dtype))

    @property
    def window(self) -> int:
        """Keys per query with a nonzero mask: distances 0 .. ceil(max z) + R - 1, at most max_span."""
        longest = math.ceil(float(self.params["span"].max()) * self.max_span)
        return max(1, min(self.max_span, longest + self.ramp))

    def head_groups(self, n_heads: int) -> list[HeadGroup]:
        return [window_group(slice(0, n_heads), self.window, self)]

    def span_mask(self, layout: Layout) -> np.ndarray:
        """m(x) = clamp((R + z_h - x) / R, 0, 1) at the distances x of the layout's pairs, on the head axis."""
        spans = self.params["span"] * self.max_span
        distances = (layout.query_positions - layout.key_positions).astype(spans.dtype)
        spans = spans.reshape((-1,) + (1,) * (distances.ndim - 2))        # on the head axis of the scores
        return np.clip((self.ramp + spans - distances) / self.ramp, 0.0, 1.0)

    def span_mask_backward(self, dspan_mask: np.ndarray, span_mask: np.ndarray) -> None:
        """Adds d loss / d span from d loss / d m (dspan_mask)."""
        # dm/d(span) = max_span / R on the ramp, 0 where the clamp holds m at 0 or 1.
        on_ramp = (span_mask > 0.0) & (span_mask < 1.0)
        other_axes = tuple(axis for axis in range(dspan_mask.ndim) if axis != 1)
        self.grads["span"] += np.sum(dspan_mask * on_ramp, axis=other_axes) * (self.max_span / self.ramp)

    def penalty(self) -> float:
        """The L1 penalty on the spans: loss_coefficient * (mean over heads of z in tokens)."""
        return self.loss_coefficient * self.max_span * float(np.mean(self.params["span"]))

    def penalty_backward(self, scale: float = 1.0) -> None:
        """scale * d penalty / d span: scale * loss_coefficient * max_span / H for every head."""
        self.grads["span"] += self.loss_coefficient * self.max_span / self.params["span"].size * scale

    def after_step(self) -> None:
        """Keep every span parameter in [0, 1] (0 to max_span tokens) after an optimizer step, as the
        reference implementation does."""
        np.clip(self.params["span"], 0.0, 1.0, out=self.params["span"])


def make_pattern(config: TransformerConfig) -> AttentionPattern:
    """The AttentionPattern a TransformerConfig asks for; a fresh one per layer (spans are per layer)."""
    if config.adaptive_span:
        return AdaptiveSpan(config.n_heads, config.max_span, config.span_ramp, config.span_loss_coefficient,
                            config.numpy_dtype)
    if config.attention == "sliding":
        return SlidingWindow(config.window)
    if config.attention == "strided":
        return Strided(config.stride)
    if config.attention == "fixed":
        return Fixed(config.stride, config.summary)
    return AttentionPattern()


def dense_mask(pattern: AttentionPattern, n_heads: int, seq_len: int) -> np.ndarray:
    """(H, T, T) bool, True where query i may not see key j: the pattern written out as an explicit mask."""
    layout = sequence_layout(seq_len)
    masks = []
    for group in pattern.head_groups(n_heads):
        blocked = group.blocked(layout.query_positions, layout.key_positions)[0, 0]
        masks += [blocked] * len(range(n_heads)[group.heads])
    return np.stack(masks)


def adaptive_spans(model: TransformerLM) -> list[AdaptiveSpan]:
    """The AdaptiveSpan of every layer of a TransformerLM, first layer first (none without adaptive_span)."""
    return [pattern for pattern in model.attention_patterns() if isinstance(pattern, AdaptiveSpan)]


def span_summary(model: TransformerLM) -> list[list[float]]:
    """The learned spans in tokens for logging: one list per layer, one float per head ([] without adaptive_span)."""
    return [(pattern.params["span"] * pattern.max_span).tolist() for pattern in adaptive_spans(model)]


def effective_spans(model: TransformerLM) -> list[list[float]]:
    """The keys each head attends, in tokens: its learned span plus the ramp, at most max_span (a span of 0.3
    with a 32-token ramp still sees 32 keys). One list per layer, one float per head ([] without adaptive_span)."""
    return [np.minimum(pattern.params["span"] * pattern.max_span + pattern.ramp, pattern.max_span).tolist()
            for pattern in adaptive_spans(model)]

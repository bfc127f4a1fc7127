"""Positional information: the fixed sinusoidal encoding (Vaswani et al. 2017) or a learned table (GPT-2).

Both map positions (T,) to vectors (T, C) that the decoder adds to the token embeddings.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from device import array_module, to_device
from module import Embedding, Module


def sinusoidal_table(positions: npt.ArrayLike, d_model: int) -> np.ndarray:
    """PE[pos, 2i] = sin(pos / 10000^(2i / d_model)),  PE[pos, 2i+1] = cos(pos / 10000^(2i / d_model)).

    positions: integers of any shape, (T,) or (B, T) -> (..., d_model) float64. Column j uses the frequency of its pair
    2 * (j // 2), so an odd d_model simply ends with a lone sine column.
    """
    xp = array_module(positions)
    columns = xp.arange(d_model)
    pair_start = columns - columns % 2
    angles = xp.asarray(positions, dtype=np.float64)[..., None] / 10000.0 ** (pair_start / d_model)
    return np.where(columns % 2 == 0, np.sin(angles), np.cos(angles))


# Positions precomputed at most: a config's max_seq_len (10**12 in a crafted config.json) sizes nothing.
PRECOMPUTED_POSITIONS = 1 << 16


class SinusoidalPositionalEncoding(Module):
    """Fixed encoding, no parameters. Table precomputed for max_seq_len positions, PRECOMPUTED_POSITIONS at
    most (in float64 for accuracy, then cast); later positions are computed on demand, since the formula has no
    limit."""

    def __init__(self, max_seq_len: int, d_model: int, dtype: npt.DTypeLike) -> None:
        super().__init__()
        self.d_model = d_model
        self.dtype = dtype
        self.table = sinusoidal_table(np.arange(min(max_seq_len, PRECOMPUTED_POSITIONS)), d_model).astype(dtype)

    def to(self, device: str) -> SinusoidalPositionalEncoding:
        """The table goes with the model (it is no parameter)."""
        self.table = to_device(self.table, device)
        return super().to(device)

    def forward(self, positions: np.ndarray) -> np.ndarray:
        """positions: (T,) or (B, T) -> (T, C) or (B, T, C). (On a GPU the bound check reads one number back.)"""
        if positions.size and positions.max() >= len(self.table):
            return sinusoidal_table(positions, self.d_model).astype(self.dtype)
        return self.table[positions]

    def backward(self, dout: np.ndarray) -> None:
        """Nothing to learn and nothing upstream: the positions are not differentiable."""


class LearnedPositionalEmbedding(Embedding):
    """A trained (max_seq_len, C) table, one row per position (GPT-2's `wpe`)."""

    def backward(self, dout: np.ndarray) -> None:
        """dout: (B, T, C). With positions (T,) every sequence used the same rows: their gradients add."""
        if dout.ndim > self.ids.ndim + 1:
            dout = dout.sum(axis=0)
        super().backward(dout)


def rope_tables(positions: npt.ArrayLike, head_dim: int, theta: float, dtype: npt.DTypeLike
                ) -> tuple[np.ndarray, np.ndarray]:
    """The cosines and sines of rotary position embeddings (RoPE, Su et al. 2021), in Hugging Face Llama's
    "rotate half" layout: coordinate i of a head pairs with coordinate i + head_dim / 2, and the pair turns by
    position * theta^(-2i / head_dim).

    positions: integers (T,) or (B, T) -> cos, sin of shape (T, D) or (B, 1, T, D), to broadcast against heads
    (B, H, T, D). Computed in float64 (angles reach 10^5 radians and more), then cast to dtype.
    """
    xp = array_module(positions)  # built where the positions are: no table crosses to a device per step
    inverse_frequencies = float(theta) ** (-xp.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = xp.asarray(positions, dtype=np.float64)[..., None] * inverse_frequencies  # (..., T, D/2)
    if angles.ndim == 3:
        angles = angles[:, None]  # (B, 1, T, D/2): the same rotation for every head of a row
    # Both halves of a head turn by the same angles: one cosine and one sine per pair, written twice.
    cos, sin = np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)
    return np.concatenate([cos, cos], axis=-1), np.concatenate([sin, sin], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate each pair (x_i, x_{i+D/2}) of x (B, H, T, D) by its angle: x * cos + rotate_half(x) * sin, with
    rotate_half(x) = [-x_second_half, x_first_half]."""
    half = x.shape[-1] // 2
    rotated = np.empty_like(x)
    rotated[..., :half] = -x[..., half:]
    rotated[..., half:] = x[..., :half]
    rotated *= sin
    rotated += x * cos
    return rotated


def apply_rope_backward(dout: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """The gradient of apply_rope: a rotation's transpose is the rotation by the opposite angle."""
    return apply_rope(dout, cos, -sin)

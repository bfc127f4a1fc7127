"""The normalizations over the feature axis: LayerNorm and RMSNorm (the residual wiring around them is in
decoder.py, which picks one from the config)."""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from module import Module


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the last axis (C).

    x: (B, T, C) -> (B, T, C).  weight (the gain) starts at 1, bias at 0; bias=False leaves the bias out.
    """

    center = True  # subtract the mean first (RMSNorm does not)

    def __init__(self, d_model: int, eps: float, dtype: npt.DTypeLike, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.add_parameter("weight", np.ones(d_model, dtype=dtype))
        if bias:
            self.add_parameter("bias", np.zeros(d_model, dtype=dtype))
        self.normalized = None
        self.inverse_std = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (..., C) -> (..., C), normalized over C."""
        centered = x - x.mean(axis=-1, keepdims=True) if self.center else x.copy()
        variance = np.mean(centered * centered, axis=-1, keepdims=True)
        self.inverse_std = 1.0 / np.sqrt(variance + self.eps)
        centered *= self.inverse_std                 # in place: x_hat without another (B, T, C) array
        self.normalized = centered
        out = self.normalized * self.params["weight"]
        if "bias" in self.params:
            out += self.params["bias"]
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (..., C) -> dx (..., C); adds the gradients of weight and bias."""
        # With x_hat the normalized input and g = dout * weight, differentiating through the mean
        # and the variance gives  dx = inverse_std * (g - mean(g) - x_hat * mean(g * x_hat));
        # without the centering (RMSNorm: dr/dx = -r^3 x / C for r = 1 / sqrt(mean(x^2) + eps)) the mean(g) term goes.
        batch_axes = tuple(range(dout.ndim - 1))
        self.grads["weight"] += np.sum(dout * self.normalized, axis=batch_axes)
        if "bias" in self.grads:
            self.grads["bias"] += np.sum(dout, axis=batch_axes)
        g = dout * self.params["weight"]
        dx = self.normalized * np.mean(g * self.normalized, axis=-1, keepdims=True)
        np.subtract(g, dx, out=dx)
        if self.center:
            dx -= g.mean(axis=-1, keepdims=True)
        dx *= self.inverse_std
        return dx


class RMSNorm(LayerNorm):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last axis (C): LayerNorm without the centering and
    without a bias (Zhang & Sennrich 2019; Llama, Mistral, Qwen2). The statistics stay in x's dtype, as
    LayerNorm's do.

    x: (B, T, C) -> (B, T, C).  weight (the gain) starts at 1.
    """

    center = False

    def __init__(self, d_model: int, eps: float, dtype: npt.DTypeLike) -> None:
        super().__init__(d_model, eps, dtype, bias=False)

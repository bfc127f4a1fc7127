"""Layer normalization and the residual connections it wraps around each sub-layer."""
import numpy as np

from module import Module


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the last axis (C).

    x: (B, T, C) -> (B, T, C).  weight (the gain) starts at 1, bias at 0.
    """

    def __init__(self, d_model, eps, dtype):
        super().__init__()
        self.eps = eps
        self.add_parameter("weight", np.ones(d_model, dtype=dtype))
        self.add_parameter("bias", np.zeros(d_model, dtype=dtype))
        self.normalized = None
        self.inverse_std = None

    def forward(self, x):
        mean = x.mean(axis=-1, keepdims=True)
        centered = x - mean
        variance = np.mean(centered * centered, axis=-1, keepdims=True)
        self.inverse_std = 1.0 / np.sqrt(variance + self.eps)
        centered *= self.inverse_std                 # in place: x_hat without another (B, T, C) array
        self.normalized = centered
        out = self.normalized * self.params["weight"]
        out += self.params["bias"]
        return out

    def backward(self, dout):
        # With x_hat the normalized input and g = dout * weight, differentiating through the mean
        # and the variance gives  dx = inverse_std * (g - mean(g) - x_hat * mean(g * x_hat)).
        batch_axes = tuple(range(dout.ndim - 1))
        self.grads["weight"] += np.sum(dout * self.normalized, axis=batch_axes)
        self.grads["bias"] += np.sum(dout, axis=batch_axes)
        g = dout * self.params["weight"]
        dx = self.normalized * np.mean(g * self.normalized, axis=-1, keepdims=True)
        np.subtract(g, dx, out=dx)
        dx -= g.mean(axis=-1, keepdims=True)
        dx *= self.inverse_std
        return dx


def residual_forward(x, sublayer, norm, norm_first, **sublayer_options):
    """One residual sub-layer in either arrangement (sublayer_options go to sublayer.forward).

    post-LN (the original Transformer): LayerNorm(x + sublayer(x))
    pre-LN  (GPT-2):                    x + sublayer(LayerNorm(x))
    """
    if norm_first:
        return x + sublayer.forward(norm.forward(x), **sublayer_options)
    return norm.forward(x + sublayer.forward(x, **sublayer_options))


def residual_backward(dout, sublayer, norm, norm_first):
    """The gradient of `residual_forward`: the identity path plus the path through the sub-layer."""
    if norm_first:
        return dout + norm.backward(sublayer.backward(dout))
    dsum = norm.backward(dout)
    return dsum + sublayer.backward(dsum)

"""The position-wise feed-forward network: Linear(C -> d_ff) -> GELU -> Linear(d_ff -> C) -> dropout, or its
gated form SwiGLU: Linear(d_ff -> C)(silu(Linear_gate(x)) * Linear(x)) -> dropout."""
from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from module import Dropout, Module, linear_backward, linear_forward

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC_COEFFICIENT = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function to float64 accuracy (NumPy has none, and SciPy is not a dependency).

    |x| < 2.5:  erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n (2x^2)^n x / (1*3*...*(2n+1)), a series of
                positive terms (no cancellation); 60 terms reach float64 precision for x^2 < 6.25.
    |x| >= 2.5: erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...))))),
                a continued fraction evaluated bottom-up; 60 levels suffice from 2.5 upward.
    The loops run over terms, never over elements, so the function is vectorized (and CuPy-ready).
    """
    magnitude = np.abs(x)
    small = np.minimum(magnitude, 2.5)
    term = small.copy()
    series = small.copy()
    for n in range(1, 60):
        term *= 2.0 * small * small / (2 * n + 1)
        series += term
    erf_small = (2.0 / math.sqrt(math.pi)) * np.exp(-small * small) * series

    large = np.maximum(magnitude, 2.5)
    fraction = large.copy()
    for level in range(60, 0, -1):
        fraction = large + (level / 2.0) / fraction
    erf_large = 1.0 - np.exp(-large * large) / (math.sqrt(math.pi) * fraction)

    return np.sign(x) * np.where(magnitude < 2.5, erf_small, erf_large)


def gelu_tanh_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GPT-2's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). Returns (out, cache).

    Written as in-place steps: every temporary the size of x would cost a pass over memory (and, for
    large arrays, fresh pages from the allocator), which is most of GELU's time.
    """
    inner = x * x
    inner *= TANH_CUBIC_COEFFICIENT
    inner += 1.0
    inner *= x
    inner *= SQRT_2_OVER_PI                      # sqrt(2/pi) (x + 0.044715 x^3)
    tanh_value = np.tanh(inner, out=inner)
    out = tanh_value + 1.0
    out *= x
    out *= 0.5
    return out, tanh_value


def gelu_tanh_backward(dout: np.ndarray, x: np.ndarray, tanh_value: np.ndarray) -> np.ndarray:
    """dout, x, the cached tanh (same shape) -> dx."""
    # d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2),  t the cached tanh;
    # computed in place, in the order of the formula read right to left.
    derivative = x * x
    derivative *= 3.0 * TANH_CUBIC_COEFFICIENT * SQRT_2_OVER_PI
    derivative += SQRT_2_OVER_PI                 # sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    sech_squared = tanh_value * tanh_value
    np.subtract(1.0, sech_squared, out=sech_squared)
    derivative *= sech_squared
    derivative *= x
    derivative += tanh_value
    derivative += 1.0
    derivative *= 0.5
    derivative *= dout
    return derivative


def gelu_exact_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)). Returns (out, cache)."""
    cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2))
    return x * cdf, cdf


def gelu_exact_backward(dout: np.ndarray, x: np.ndarray, cdf: np.ndarray) -> np.ndarray:
    """dout, x, the cached Phi(x) (same shape) -> dx."""
    # d/dx [x Phi(x)] = Phi(x) + x phi(x), with phi the standard normal density.
    return dout * (cdf + x * INV_SQRT_2PI * np.exp(-0.5 * x * x))


def swiglu_forward(gate: np.ndarray, up: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SwiGLU's gating (Shazeer 2020): silu(gate) * up, silu(z) = z * sigmoid(z). Returns (out, sigmoid(gate)).

    sigmoid(z) = 1 / (1 + exp(-z)) keeps full relative precision for z << 0 (where (1 + tanh(z / 2)) / 2
    would cancel); for z below about -88 (float32) exp(-z) overflows to inf and 1 / inf is the exact 0.
    """
    sigmoid = np.negative(gate)
    with np.errstate(over="ignore"):
        np.exp(sigmoid, out=sigmoid)
    sigmoid += 1.0
    np.reciprocal(sigmoid, out=sigmoid)
    out = gate * sigmoid
    out *= up
    return out, sigmoid


def swiglu_backward(dout: np.ndarray, gate: np.ndarray, up: np.ndarray, sigmoid: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """dout, the gate and up inputs, the cached sigmoid(gate) (all the same shape) -> (dgate, dup)."""
    # dup = dout * silu(gate);  dgate = dout * up * silu'(gate),  silu'(z) = s (1 + z (1 - s)), s = sigmoid(z).
    dup = gate * sigmoid
    dup *= dout
    dgate = 1.0 - sigmoid
    dgate *= gate
    dgate += 1.0
    dgate *= sigmoid
    dgate *= up
    dgate *= dout
    return dgate, dup


ACTIVATIONS = {
    "gelu_tanh": (gelu_tanh_forward, gelu_tanh_backward),
    "gelu": (gelu_exact_forward, gelu_exact_backward),
}
GATED_ACTIVATIONS = {"swiglu": (swiglu_forward, swiglu_backward)}


class FeedForward(Module):
    """x: (B, T, C) -> (B, T, C).

    activation "gelu_tanh" / "gelu":  W_out(act(W_in x + b_in)) + b_out.
    activation "swiglu":              W_out(silu(W_gate x + b_gate) * (W_in x + b_in)) + b_out, d_ff the gated
                                      width; W_gate, W_in, W_out are Llama's gate_proj, up_proj, down_proj.
    Parameters W_in (C, d_ff), b_in (d_ff,), [W_gate (C, d_ff), b_gate (d_ff,)], W_out (d_ff, C), b_out (C,);
    bias=False leaves out every b_*.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str, dropout: float, rng: np.random.Generator,
                 dtype: npt.DTypeLike, bias: bool = True) -> None:
        super().__init__()
        self.gated = activation in GATED_ACTIVATIONS
        self.add_parameter("W_in", np.zeros((d_model, d_ff), dtype=dtype))
        if bias:
            self.add_parameter("b_in", np.zeros(d_ff, dtype=dtype))
        if self.gated:
            self.add_parameter("W_gate", np.zeros((d_model, d_ff), dtype=dtype))
            if bias:
                self.add_parameter("b_gate", np.zeros(d_ff, dtype=dtype))
        self.add_parameter("W_out", np.zeros((d_ff, d_model), dtype=dtype))
        if bias:
            self.add_parameter("b_out", np.zeros(d_model, dtype=dtype))
        self.activation_forward, self.activation_backward = {**ACTIVATIONS, **GATED_ACTIVATIONS}[activation]
        self.dropout = Dropout(dropout, rng)
        self.cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x: (B, T, C) -> (B, T, C)."""
        p = self.params
        hidden = linear_forward(x, p["W_in"], p.get("b_in"))                # (B, T, d_ff)
        if self.gated:
            gate = linear_forward(x, p["W_gate"], p.get("b_gate"))          # (B, T, d_ff)
            activated, activation_cache = self.activation_forward(gate, hidden)
            activation_cache = (gate, activation_cache)
        else:
            activated, activation_cache = self.activation_forward(hidden)
        out = linear_forward(activated, p["W_out"], p.get("b_out"))         # (B, T, C)
        self.cache = (x, hidden, activation_cache, activated)
        return self.dropout.forward(out)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (B, T, C) -> dx (B, T, C); adds the gradients of the parameters."""
        x, hidden, activation_cache, activated = self.cache
        p, g = self.params, self.grads
        dout = self.dropout.backward(dout)
        dactivated = linear_backward(dout, activated, p["W_out"], g["W_out"], g.get("b_out"))
        if not self.gated:
            dhidden = self.activation_backward(dactivated, hidden, activation_cache)
            return linear_backward(dhidden, x, p["W_in"], g["W_in"], g.get("b_in"))
        gate, sigmoid = activation_cache
        dgate, dhidden = self.activation_backward(dactivated, gate, hidden, sigmoid)
        dx = linear_backward(dhidden, x, p["W_in"], g["W_in"], g.get("b_in"))
        dx += linear_backward(dgate, x, p["W_gate"], g["W_gate"], g.get("b_gate"))
        return dx

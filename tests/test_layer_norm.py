import numpy as np
import pytest
from gradcheck import RELATIVE_ERROR_BOUND, check_gradients, check_layer

from layer_norm import LayerNorm, residual_backward, residual_forward
from module import Module


def test_rows_have_zero_mean_and_unit_variance_before_gain_and_bias():
    rng = np.random.default_rng(0)
    norm = LayerNorm(16, eps=1e-5, dtype=np.float64)
    x = rng.normal(3.0, 5.0, size=(4, 7, 16))
    out = norm.forward(x)
    np.testing.assert_allclose(out.mean(axis=-1), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=-1), 1.0, rtol=1e-5)  # eps shifts it very slightly


def test_gain_and_bias_apply_per_feature():
    rng = np.random.default_rng(1)
    norm = LayerNorm(5, eps=1e-5, dtype=np.float64)
    x = rng.standard_normal((3, 5))
    plain = norm.forward(x)
    norm.params["weight"][...] = np.arange(1.0, 6.0)
    norm.params["bias"][...] = -2.0
    np.testing.assert_allclose(norm.forward(x), plain * np.arange(1.0, 6.0) - 2.0)


def test_layer_norm_gradient_check():
    rng = np.random.default_rng(2)
    norm = LayerNorm(6, eps=1e-5, dtype=np.float64)
    norm.params["weight"][...] = rng.standard_normal(6)
    norm.params["bias"][...] = rng.standard_normal(6)
    errors = check_layer(norm, rng.standard_normal((2, 3, 6)), rng)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


class Scale(Module):
    """A stand-in sub-layer y = x * s, enough to check the residual wiring."""

    def __init__(self, scale):
        super().__init__()
        self.add_parameter("scale", np.asarray(scale, dtype=np.float64))

    def forward(self, x):
        self.x = x
        return x * self.params["scale"]

    def backward(self, dout):
        self.grads["scale"] += np.sum(dout * self.x, axis=(0, 1))
        return dout * self.params["scale"]


@pytest.mark.parametrize("norm_first", [False, True])
def test_residual_arrangements(norm_first):
    rng = np.random.default_rng(3)
    sublayer, norm = Scale(rng.standard_normal(4)), LayerNorm(4, eps=1e-5, dtype=np.float64)
    x = rng.standard_normal((2, 3, 4))
    out = residual_forward(x, sublayer, norm, norm_first)
    if norm_first:
        expected = x + LayerNorm(4, 1e-5, np.float64).forward(x) * sublayer.params["scale"]
    else:
        expected = LayerNorm(4, 1e-5, np.float64).forward(x + x * sublayer.params["scale"])
    np.testing.assert_allclose(out, expected, atol=1e-12)

    weights = rng.standard_normal(out.shape)
    sublayer.zero_grad()
    norm.zero_grad()
    dx = residual_backward(weights, sublayer, norm, norm_first)
    errors = check_gradients(lambda: float(np.sum(residual_forward(x, sublayer, norm, norm_first) * weights)),
                             {"x": dx, "scale": sublayer.grads["scale"].copy(), "weight": norm.grads["weight"].copy()},
                             {"x": x, "scale": sublayer.params["scale"], "weight": norm.params["weight"]}, rng)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors

import numpy as np
import pytest
from conftest import require_oracle
from gradcheck import RELATIVE_ERROR_BOUND, check_layer, relative_error

from layer_norm import LayerNorm, RMSNorm


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


def test_layer_norm_without_bias_has_only_a_gain():
    rng = np.random.default_rng(3)
    norm = LayerNorm(6, eps=1e-5, dtype=np.float64, bias=False)
    assert list(norm.params) == ["weight"] and list(norm.grads) == ["weight"]
    norm.params["weight"][...] = rng.standard_normal(6)
    x = rng.standard_normal((2, 3, 6))
    with_bias = LayerNorm(6, eps=1e-5, dtype=np.float64)
    with_bias.params["weight"][...] = norm.params["weight"]
    np.testing.assert_array_equal(norm.forward(x), with_bias.forward(x))  # a zero bias changes nothing
    errors = check_layer(norm, x, rng)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


def test_rms_norm_scales_rows_to_unit_root_mean_square_without_centering():
    rng = np.random.default_rng(4)
    norm = RMSNorm(16, eps=1e-12, dtype=np.float64)
    assert list(norm.params) == ["weight"]
    x = rng.normal(3.0, 5.0, size=(4, 7, 16))
    out = norm.forward(x)
    np.testing.assert_allclose(np.sqrt(np.mean(out**2, axis=-1)), 1.0, rtol=1e-10)
    # No centering: each row is only rescaled, by a positive factor, so the mean keeps its sign and a
    # row scaled by 10 normalizes to the same output.
    np.testing.assert_allclose(out / x, np.broadcast_to((out / x)[..., :1], x.shape), rtol=1e-12)
    np.testing.assert_array_equal(np.sign(out.mean(axis=-1)), np.sign(x.mean(axis=-1)))
    np.testing.assert_allclose(norm.forward(10.0 * x), out, rtol=1e-12)


def test_rms_norm_eps_guards_a_zero_row():
    norm = RMSNorm(4, eps=1e-5, dtype=np.float32)
    out = norm.forward(np.zeros((1, 4), dtype=np.float32))
    assert np.all(out == 0.0)
    dx = norm.backward(np.ones((1, 4), dtype=np.float32))
    assert np.all(np.isfinite(dx))
    np.testing.assert_allclose(dx, 1.0 / np.sqrt(1e-5), rtol=1e-5)  # d/dx (x / sqrt(eps)) at x = 0


@pytest.mark.parametrize("shape", [(2, 3, 6), (5, 1)])
def test_rms_norm_gradient_check(shape):
    rng = np.random.default_rng(5)
    norm = RMSNorm(shape[-1], eps=1e-5, dtype=np.float64)
    norm.params["weight"][...] = rng.standard_normal(shape[-1])
    errors = check_layer(norm, rng.standard_normal(shape), rng)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


@pytest.mark.parametrize("norm_class", [LayerNorm, RMSNorm])
def test_float32_stays_float32(norm_class):
    norm = norm_class(8, eps=1e-5, dtype=np.float32)
    x = np.random.default_rng(6).standard_normal((2, 3, 8)).astype(np.float32)
    out = norm.forward(x)
    dx = norm.backward(np.ones_like(out))
    assert out.dtype == dx.dtype == norm.grads["weight"].dtype == np.float32


@pytest.mark.parametrize("dtype,bound", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_rms_norm_against_pytorch(dtype, bound):
    torch = require_oracle("torch")
    rng = np.random.default_rng(7)
    norm = RMSNorm(10, eps=1e-6, dtype=dtype)
    norm.params["weight"][...] = rng.standard_normal(10)
    x = rng.normal(1.0, 3.0, (3, 4, 10)).astype(dtype)
    dout = rng.standard_normal((3, 4, 10)).astype(dtype)
    out = norm.forward(x)
    dx = norm.backward(dout)
    x_torch = torch.tensor(x, requires_grad=True)
    weight = torch.tensor(norm.params["weight"], requires_grad=True)
    out_torch = torch.nn.functional.rms_norm(x_torch, (10,), weight, 1e-6)
    out_torch.backward(torch.tensor(dout))
    assert relative_error(out, out_torch.detach().numpy()) < bound
    assert relative_error(dx, x_torch.grad.numpy()) < bound
    assert relative_error(norm.grads["weight"], weight.grad.numpy()) < bound

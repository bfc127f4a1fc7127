import numpy as np
from gradcheck import RELATIVE_ERROR_BOUND, check_layer

from layer_norm import LayerNorm


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

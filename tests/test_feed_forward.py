import math

import numpy as np
import pytest
from gradcheck import RELATIVE_ERROR_BOUND, check_layer

from feed_forward import FeedForward, erf, gelu_exact_forward, gelu_tanh_forward


def test_erf_matches_the_standard_library_to_float64_accuracy():
    x = np.concatenate([np.linspace(-7.0, 7.0, 20001), [0.0, 2.5, -2.5, 1e-8, 30.0, -30.0]])
    expected = np.array([math.erf(value) for value in x])
    assert np.max(np.abs(erf(x) - expected)) < 5e-15


def test_erf_keeps_float32():
    assert erf(np.linspace(-4, 4, 9, dtype=np.float32)).dtype == np.float32


def test_gelu_forms_against_their_definitions():
    x = np.linspace(-6.0, 6.0, 101)
    exact = np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(gelu_exact_forward(x)[0], exact, atol=1e-14)
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(gelu_tanh_forward(x)[0], tanh_form, atol=1e-14)
    # The approximation stays close to the exact form (its known error is below 1e-3).
    assert np.max(np.abs(gelu_tanh_forward(x)[0] - exact)) < 1e-3


def make_feed_forward(activation, dropout, seed):
    rng = np.random.default_rng(seed)
    layer = FeedForward(6, 10, activation, dropout, np.random.default_rng(seed + 100), np.float64)
    for value in layer.params.values():
        value[...] = rng.standard_normal(value.shape) * 0.5
    return layer


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_feed_forward_gradient_check(activation, dropout):
    layer = make_feed_forward(activation, dropout, seed=4)
    rng = np.random.default_rng(5)
    errors = check_layer(layer, rng.standard_normal((2, 3, 6)), rng, dropout_rng=layer.dropout.rng)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


def test_feed_forward_shapes():
    layer = make_feed_forward("gelu_tanh", 0.0, seed=6)
    assert layer.forward(np.ones((3, 5, 6))).shape == (3, 5, 6)
    assert layer.params["W_in"].shape == (6, 10) and layer.params["W_out"].shape == (10, 6)

import math
import warnings

import numpy as np
import pytest
from conftest import require_oracle
from gradcheck import RELATIVE_ERROR_BOUND, check_layer, relative_error

from feed_forward import FeedForward, erf, gelu_exact_forward, gelu_tanh_forward, swiglu_forward


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


def test_swiglu_against_its_definition_and_without_overflow():
    gate = np.concatenate([np.linspace(-8.0, 8.0, 81), [-1000.0, 1000.0]])
    up = np.linspace(-2.0, 3.0, gate.size)
    silu = np.array([z / (1.0 + math.exp(-z)) if z > -700 else 0.0 for z in gate])
    np.testing.assert_allclose(swiglu_forward(gate, up)[0], silu * up, rtol=1e-14, atol=1e-300)
    with warnings.catch_warnings():  # float32 gates far out of exp's range: exact values, no warning
        warnings.simplefilter("error")
        out, sigmoid = swiglu_forward(np.array([-200.0, 200.0], np.float32), np.ones(2, np.float32))
    assert out.dtype == sigmoid.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 200.0])


def make_feed_forward(activation, dropout, seed, bias=True):
    rng = np.random.default_rng(seed)
    layer = FeedForward(6, 10, activation, dropout, np.random.default_rng(seed + 100), np.float64, bias=bias)
    for value in layer.params.values():
        value[...] = rng.standard_normal(value.shape) * 0.5
    return layer


@pytest.mark.parametrize("activation,bias", [("gelu_tanh", True), ("gelu", True), ("swiglu", True),
                                             ("swiglu", False), ("gelu_tanh", False)])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_feed_forward_gradient_check(activation, bias, dropout):
    layer = make_feed_forward(activation, dropout, seed=4, bias=bias)
    rng = np.random.default_rng(5)
    errors = check_layer(layer, rng.standard_normal((2, 3, 6)), rng, dropout_rng=layer.dropout.rng)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


def test_feed_forward_shapes():
    layer = make_feed_forward("gelu_tanh", 0.0, seed=6)
    assert layer.forward(np.ones((3, 5, 6))).shape == (3, 5, 6)
    assert layer.params["W_in"].shape == (6, 10) and layer.params["W_out"].shape == (10, 6)


@pytest.mark.parametrize("activation,bias,names", [
    ("gelu_tanh", True, ["W_in", "b_in", "W_out", "b_out"]),
    ("gelu_tanh", False, ["W_in", "W_out"]),
    ("swiglu", True, ["W_in", "b_in", "W_gate", "b_gate", "W_out", "b_out"]),
    ("swiglu", False, ["W_in", "W_gate", "W_out"]),
])
def test_parameters_of_each_form(activation, bias, names):
    layer = make_feed_forward(activation, 0.0, seed=7, bias=bias)
    assert list(layer.params) == names and list(layer.grads) == names
    assert layer.params["W_in"].shape == (6, 10) and layer.params["W_out"].shape == (10, 6)
    if activation == "swiglu":
        assert layer.params["W_gate"].shape == (6, 10)  # d_ff is the gated width


@pytest.mark.parametrize("bias", [True, False])
def test_swiglu_feed_forward_is_down_of_silu_gate_times_up(bias):
    layer = make_feed_forward("swiglu", 0.0, seed=8, bias=bias)
    p = {name: value.copy() for name, value in layer.params.items()}
    x = np.random.default_rng(9).standard_normal((2, 3, 6))
    gate = x @ p["W_gate"] + p.get("b_gate", 0.0)
    up = x @ p["W_in"] + p.get("b_in", 0.0)
    expected = (gate / (1.0 + np.exp(-gate)) * up) @ p["W_out"] + p.get("b_out", 0.0)
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype,bound", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_swiglu_feed_forward_against_pytorch(dtype, bound):
    torch = require_oracle("torch")
    layer = FeedForward(6, 10, "swiglu", 0.0, np.random.default_rng(0), dtype)
    rng = np.random.default_rng(11)
    for value in layer.params.values():
        value[...] = rng.standard_normal(value.shape)
    x = rng.standard_normal((2, 5, 6)).astype(dtype)
    dout = rng.standard_normal((2, 5, 6)).astype(dtype)
    out = layer.forward(x)
    dx = layer.backward(dout)
    assert out.dtype == dx.dtype == dtype
    p = {name: torch.tensor(value, requires_grad=True) for name, value in layer.params.items()}
    x_torch = torch.tensor(x, requires_grad=True)
    silu = torch.nn.functional.silu(x_torch @ p["W_gate"] + p["b_gate"])
    out_torch = (silu * (x_torch @ p["W_in"] + p["b_in"])) @ p["W_out"] + p["b_out"]
    out_torch.backward(torch.tensor(dout))
    assert relative_error(out, out_torch.detach().numpy()) < bound
    assert relative_error(dx, x_torch.grad.numpy()) < bound
    for name, tensor in p.items():
        assert relative_error(layer.grads[name], tensor.grad.numpy()) < bound, name

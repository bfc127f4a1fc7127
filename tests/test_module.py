import numpy as np
import pytest

from module import Dropout, Module


def test_dropout_is_the_identity_in_eval_mode():
    dropout = Dropout(0.5, np.random.default_rng(0)).eval()
    x = np.arange(12.0).reshape(3, 4)
    assert dropout.forward(x) is x
    assert dropout.backward(x) is x


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inverted_dropout_keeps_the_expectation(dtype):
    p = 0.3
    out = Dropout(p, np.random.default_rng(1)).forward(np.ones(200_000, dtype=dtype))
    assert out.dtype == dtype
    kept = out != 0
    assert abs(kept.mean() - (1 - p)) < 0.005
    np.testing.assert_allclose(out[kept], 1 / (1 - p), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.01


def test_dropout_is_reproducible_under_a_seed_and_backward_uses_the_same_mask():
    x = np.random.default_rng(2).standard_normal((5, 6))
    first, second = Dropout(0.5, np.random.default_rng(7)), Dropout(0.5, np.random.default_rng(7))
    out = first.forward(x)
    np.testing.assert_array_equal(out, second.forward(x))
    assert not np.array_equal(out, Dropout(0.5, np.random.default_rng(8)).forward(x))
    dout = np.ones_like(x)
    np.testing.assert_array_equal(first.backward(dout) != 0, out != 0)


class SquaredPenalty(Module):
    """A layer with hooks of its own: penalty = coefficient * sum(w^2), and after_step clamps w to [-1, 1]."""

    def __init__(self, values, coefficient):
        super().__init__()
        self.coefficient = coefficient
        self.add_parameter("w", np.array(values, dtype=np.float64))
        self.steps = 0

    def penalty(self):
        return self.coefficient * float(np.sum(self.params["w"] ** 2))

    def penalty_backward(self, scale=1.0):
        self.grads["w"] += 2 * self.coefficient * self.params["w"] * scale

    def after_step(self):
        self.steps += 1
        np.clip(self.params["w"], -1.0, 1.0, out=self.params["w"])


class Container(Module):
    def __init__(self, *children):
        super().__init__()
        self.layers = list(children)


def test_hooks_are_collected_over_the_whole_tree():
    first, second = SquaredPenalty([1.0, -2.0], 0.5), SquaredPenalty([3.0], 0.25)
    root = Container(first, Container(Dropout(0.1, np.random.default_rng(0)), second))
    assert Container().penalty() == 0.0 and Dropout(0.1, None).penalty() == 0.0  # no hook anywhere: nothing added
    assert root.penalty() == 0.5 * (1 + 4) + 0.25 * 9

    root.penalty_backward()
    np.testing.assert_array_equal(root.gradients()["layers.0.w"], [1.0, -2.0])
    np.testing.assert_array_equal(root.gradients()["layers.1.layers.1.w"], [1.5])

    root.after_step()
    assert (first.steps, second.steps) == (1, 1)  # every layer's hook, each once
    np.testing.assert_array_equal(first.params["w"], [1.0, -1.0])
    np.testing.assert_array_equal(second.params["w"], [1.0])

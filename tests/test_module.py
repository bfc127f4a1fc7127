import numpy as np
import pytest

from module import Dropout


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

import math

import numpy as np
import pytest
from gradcheck import RELATIVE_ERROR_BOUND, check_gradients

from positional_encoding import LearnedPositionalEmbedding, SinusoidalPositionalEncoding, sinusoidal_table


@pytest.mark.parametrize("d_model", [1, 2, 7, 16])
def test_sinusoidal_values_follow_the_formula(d_model):
    table = sinusoidal_table(np.arange(50), d_model)
    assert table.shape == (50, d_model)
    for position in (0, 1, 17, 49):
        for column in range(d_model):
            i = column // 2
            angle = position / 10000 ** (2 * i / d_model)
            expected = math.sin(angle) if column % 2 == 0 else math.cos(angle)
            assert table[position, column] == pytest.approx(expected, abs=1e-12)


def test_sinusoidal_encoding_extends_past_the_precomputed_table():
    encoding = SinusoidalPositionalEncoding(max_seq_len=8, d_model=6, dtype=np.float32)
    beyond = encoding.forward(np.arange(5, 12))
    assert beyond.dtype == np.float32
    np.testing.assert_allclose(beyond, sinusoidal_table(np.arange(5, 12), 6), atol=1e-6)
    np.testing.assert_array_equal(beyond[:3], encoding.forward(np.arange(5, 8)))


def test_learned_embedding_looks_up_rows_and_sums_gradients_over_the_batch():
    rng = np.random.default_rng(0)
    embedding = LearnedPositionalEmbedding(10, 4, np.float64)
    embedding.params["weight"][...] = rng.standard_normal((10, 4))
    np.testing.assert_array_equal(embedding.forward(np.arange(6)), embedding.params["weight"][:6])
    dout = rng.standard_normal((3, 6, 4))
    embedding.zero_grad()
    embedding.backward(dout)
    np.testing.assert_allclose(embedding.grads["weight"][:6], dout.sum(axis=0))
    assert not embedding.grads["weight"][6:].any()


def test_learned_embedding_gradient_check():
    rng = np.random.default_rng(1)
    embedding = LearnedPositionalEmbedding(9, 5, np.float64)
    embedding.params["weight"][...] = rng.standard_normal((9, 5))
    weights = rng.standard_normal((2, 7, 5))

    def loss():
        # Broadcast over a batch of 2, as the decoder does when it adds positions to (B, T, C).
        return float(np.sum((np.zeros((2, 7, 5)) + embedding.forward(np.arange(7))) * weights))

    embedding.zero_grad()
    embedding.forward(np.arange(7))
    embedding.backward(weights)
    errors = check_gradients(loss, {"weight": embedding.grads["weight"].copy()},
                             {"weight": embedding.params["weight"]}, rng, max_count=45)
    assert errors["weight"] < RELATIVE_ERROR_BOUND


def test_sinusoidal_has_no_parameters():
    encoding = SinusoidalPositionalEncoding(max_seq_len=8, d_model=6, dtype=np.float64)
    assert encoding.parameters() == {}
    assert encoding.forward(np.arange(3)).shape == (3, 6)

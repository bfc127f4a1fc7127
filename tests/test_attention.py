import math

import numpy as np
import pytest
from gradcheck import RELATIVE_ERROR_BOUND, check_layer

from attention import CausalSelfAttention, causal_blocked, softmax


def make_attention(d_model=8, n_heads=2, dropout=0.0, seed=0):
    rng = np.random.default_rng(seed)
    layer = CausalSelfAttention(d_model, n_heads, dropout, np.random.default_rng(seed + 100), np.float64)
    for value in layer.params.values():
        value[...] = rng.standard_normal(value.shape) * 0.5
    return layer


def causal_mask(num_queries, num_keys):
    """(Tq, Tk) True where a query may not see a key, the queries being the last Tq of Tk positions."""
    return causal_blocked(np.arange(num_keys - num_queries, num_keys)[:, None], np.arange(num_keys)[None, :])


def test_causal_rule_blocks_exactly_the_future():
    mask = causal_mask(4, 4)
    for query in range(4):
        for key in range(4):
            assert mask[query, key] == (key > query)
    # Queries that are the last 2 of 5 positions (3 and 4) see keys up to their own position.
    np.testing.assert_array_equal(causal_mask(2, 5), [[0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])


def test_softmax_rows_sum_to_one_and_masked_entries_are_exactly_zero():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((2, 3, 5, 5)) * 50  # large values would overflow a naive exp
    scores[..., causal_mask(5, 5)] = -np.inf
    probabilities = softmax(scores)
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-12)
    assert np.all(probabilities[..., causal_mask(5, 5)] == 0.0)


def loop_reference(layer, x):
    """The textbook form, one head and one query at a time, to check the batched implementation."""
    B, T, C = x.shape
    D = C // layer.n_heads
    p = layer.params
    qkv = x @ p["W_qkv"] + p["b_qkv"]
    out = np.zeros_like(x)
    for b in range(B):
        for h in range(layer.n_heads):
            q = qkv[b, :, h * D:(h + 1) * D]
            k = qkv[b, :, C + h * D:C + (h + 1) * D]
            v = qkv[b, :, 2 * C + h * D:2 * C + (h + 1) * D]
            for t in range(T):
                scores = np.array([q[t] @ k[j] / math.sqrt(D) for j in range(t + 1)])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, t, h * D:(h + 1) * D] = weights @ v[: t + 1]
    return out @ p["W_out"] + p["b_out"]


@pytest.mark.parametrize("shape,n_heads", [((2, 5, 8), 2), ((1, 7, 6), 3), ((3, 1, 4), 4)])
def test_batched_heads_match_the_per_head_loop(shape, n_heads):
    layer = make_attention(shape[2], n_heads, seed=2)
    x = np.random.default_rng(3).standard_normal(shape)
    out = layer.forward(x)
    assert out.shape == shape
    np.testing.assert_allclose(out, loop_reference(layer, x), atol=1e-12)


def test_changing_later_tokens_leaves_earlier_outputs_unchanged():
    layer = make_attention(seed=4)
    x = np.random.default_rng(5).standard_normal((2, 6, 8))
    changed = x.copy()
    changed[:, 3:] += 10.0
    np.testing.assert_allclose(layer.forward(x)[:, :3], layer.forward(changed)[:, :3], atol=1e-12)
    assert not np.allclose(layer.forward(x)[:, 3:], layer.forward(changed)[:, 3:])


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_attention_gradient_check(dropout):
    layer = make_attention(dropout=dropout, seed=6)
    rng = np.random.default_rng(7)
    errors = check_layer(layer, rng.standard_normal((2, 4, 8)), rng, dropout_rng=layer.attention_dropout.rng)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors

import math

import numpy as np
import pytest
from conftest import decoding_steps
from gradcheck import RELATIVE_ERROR_BOUND, check_layer

from attention import AttentionPattern, CausalSelfAttention, TiledLayout, causal_blocked, softmax
from generation import DecodingState
from sparse_attention import AdaptiveSpan, SlidingWindow, Strided
from transformer_lm import TransformerConfig, TransformerLM


def make_attention(d_model=8, n_heads=2, dropout=0.0, seed=0, pattern=None):
    rng = np.random.default_rng(seed)
    layer = CausalSelfAttention(d_model, n_heads, dropout, np.random.default_rng(seed + 100), np.float64, pattern)
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


def tiled(layer, tile_size, recompute=True):
    """The layer with its full causal attention in tiles of tile_size queries at every length; recompute: the
    backward recomputes every tile's weights (as long sequences do) instead of keeping them."""
    layer.pattern.tiled_from, layer.pattern.tile_size = 1, tile_size
    layer.pattern.kept_scores = 0 if recompute else math.inf
    return layer


def forward_and_gradients(layer, x, dout):
    layer.zero_grad()
    out = layer.forward(x)
    return {"out": out, "input": layer.backward(dout), **{name: grad.copy() for name, grad in layer.grads.items()}}


def adaptive_span():
    pattern = AdaptiveSpan(3, max_span=6, ramp=2, loss_coefficient=0.0, dtype=np.float64)
    pattern.params["span"][...] = [0.13, 0.37, 0.52]  # 0.78, 2.22, 3.12 tokens: off the soft mask's kinks
    return pattern


# The patterns whose heads may run in tiles: full attention, and windows, whose band is a few tiles.
TILED_PATTERNS = {"full": AttentionPattern, "sliding": lambda: SlidingWindow(4), "strided": lambda: Strided(3),
                  "adaptive span": adaptive_span}


# Lengths that are multiples of no tile (13, 7), a tile larger than the sequence, one token, tiles of one query.
@pytest.mark.parametrize("seq_len,tile_size", [(13, 5), (13, 4), (7, 16), (1, 3), (6, 1)])
@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("pattern", TILED_PATTERNS)
def test_tiled_attention_equals_the_dense_kernel_forward_and_every_gradient(seq_len, tile_size, recompute, pattern):
    rng = np.random.default_rng(11)
    x, dout = rng.standard_normal((2, seq_len, 12)), rng.standard_normal((2, seq_len, 12))
    dense = make_attention(12, 3, seed=12, pattern=TILED_PATTERNS[pattern]())
    dense.pattern.tiled_from = None
    expected = forward_and_gradients(dense, x, dout)
    layer = tiled(make_attention(12, 3, seed=12, pattern=TILED_PATTERNS[pattern]()), tile_size, recompute)
    actual = forward_and_gradients(layer, x, dout)
    tiled_caches = [cache for _, layout, cache in layer.pattern.cache if isinstance(layout, TiledLayout)]
    assert tiled_caches and all((cache.tile_caches is None) == recompute for cache in tiled_caches)
    assert isinstance(actual["out"], np.ndarray) and actual.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=1e-12, err_msg=name)


def test_long_sequences_tile_by_default_and_short_ones_stay_dense():
    layer = make_attention(8, 2)
    layer.pattern.tiled_from, layer.pattern.tile_size = 10, 4
    layer.forward(np.zeros((1, 9, 8)))
    assert type(layer.pattern.cache[0][1]).__name__ == "DenseLayout"
    layer.forward(np.zeros((1, 10, 8)))
    layout = layer.pattern.cache[0][1]
    assert isinstance(layout, TiledLayout)
    # Tiles of 4 queries, each against the keys up to its last query: nothing above the diagonal.
    assert [(rows.start, rows.stop, keys.start, keys.stop) for rows, keys, _ in layout.tiles] == [
        (0, 4, 0, 4), (4, 8, 0, 8), (8, 10, 0, 10)]
    # A window of 4 keys: each tile starts at its first query's earliest key, so only the band is computed.
    windowed = tiled(make_attention(8, 2, pattern=SlidingWindow(4)), 4)
    windowed.forward(np.zeros((1, 10, 8)))
    assert [(rows.start, rows.stop, keys.start, keys.stop) for rows, keys, _ in windowed.pattern.cache[0][1].tiles] == [
        (0, 4, 0, 4), (4, 8, 1, 8), (8, 10, 5, 10)]
    # Training keeps the tiles' weights while they hold at most kept_scores scores: here 2 heads x (4 x 4 + 4 x 8
    # + 2 x 10) = 136; evaluation never keeps them.
    for kept_scores, training, kept in [(136, True, True), (135, True, False), (136, False, False)]:
        layer.pattern.kept_scores = kept_scores
        layer.train(training).forward(np.zeros((1, 10, 8)))
        assert (layer.pattern.cache[0][2].tile_caches is not None) == kept


@pytest.mark.parametrize("dropout", [0.0, 0.25])
@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("pattern", TILED_PATTERNS)
def test_tiled_attention_gradient_check(dropout, recompute, pattern):
    # With dropout, every recomputed tile must redraw the mask its forward drew, or the gradients miss.
    layer = tiled(make_attention(12, 3, dropout=dropout, seed=13, pattern=TILED_PATTERNS[pattern]()), 2, recompute)
    rng = np.random.default_rng(14)
    errors = check_layer(layer, rng.standard_normal((2, 7, 12)), rng, dropout_rng=layer.attention_dropout.rng)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


def test_tiled_dropout_drops_weights_and_is_seeded_by_the_model_generator():
    x = np.random.default_rng(15).standard_normal((1, 9, 8))
    outputs = [tiled(make_attention(dropout=0.5, seed=16), 4).forward(x) for _ in range(2)]
    np.testing.assert_array_equal(outputs[0], outputs[1])            # same seed, same masks
    evaluated = tiled(make_attention(dropout=0.5, seed=16), 4).eval().forward(x)
    assert not np.allclose(outputs[0], evaluated)                     # the masks did drop weights
    layer = tiled(make_attention(dropout=0.5, seed=16), 4)
    layer.forward(x)
    assert not np.allclose(layer.forward(x), outputs[0])              # the next pass draws new masks


def test_kv_cache_decoding_equals_the_tiled_full_forward():
    # Decoding attends densely from positions (one query row needs no tiles); the full forward runs in tiles.
    config = TransformerConfig(vocab_size=11, d_model=8, n_heads=2, n_layers=2, max_seq_len=16, dropout=0.0,
                               dtype="float64")
    model = TransformerLM(config, seed=17).eval()
    for pattern in model.attention_patterns():
        pattern.tiled_from, pattern.tile_size = 1, 3
    rng = np.random.default_rng(18)
    ids = rng.integers(0, 11, (2, 4))
    for logits, full_logits in decoding_steps(model, DecodingState(model, 2, 14), ids, 10, rng):
        assert isinstance(model.attention_patterns()[0].cache[0][1], TiledLayout)
        np.testing.assert_allclose(logits, full_logits, rtol=0, atol=1e-12)

"""Grouped-query attention (n_kv_heads < n_heads; 1 is multi-query) with rotary positions: the grouping convention,
the KV cache's size, incremental decoding against the full forward, and the config's checks."""
import math

import numpy as np
import pytest
from conftest import decoding_steps
from gradcheck import RELATIVE_ERROR_BOUND, check_layer, check_model

from attention import AttentionPattern, CausalSelfAttention, TiledLayout
from generation import DecodingState, decode, greedy_without_cache, left_pad
from sparse_attention import AdaptiveSpan, Fixed, SlidingWindow, Strided, dense_mask
from transformer_lm import TransformerConfig, TransformerLM


def make_attention(n_heads=4, n_kv_heads=2, head_dim=3, d_model=10, rope_theta=None, pattern=None, dropout=0.0,
                   qkv_bias=True, bias=True, seed=0):
    rng = np.random.default_rng(seed)
    layer = CausalSelfAttention(d_model, n_heads, dropout, np.random.default_rng(seed + 100), np.float64, pattern,
                                bias=bias, n_kv_heads=n_kv_heads, head_dim=head_dim, qkv_bias=qkv_bias,
                                rope_theta=rope_theta)
    for value in layer.params.values():
        value[...] = rng.standard_normal(value.shape) * 0.5
    return layer


def rotate(vector, position, theta):
    """One head vector turned by RoPE at `position`, pair (i, i + D/2) by position * theta^(-2i/D), written out."""
    D = len(vector)
    out = vector.copy()
    for i in range(D // 2):
        angle = position * theta ** (-2 * i / D)
        first, second = vector[i], vector[i + D // 2]
        out[i] = first * math.cos(angle) - second * math.sin(angle)
        out[i + D // 2] = second * math.cos(angle) + first * math.sin(angle)
    return out


def loop_reference(layer, x, positions=None):
    """Textbook grouped-query attention, one query head and one query at a time: query head h reads key/value
    head h // (H / KV); RoPE by each token's position; the pattern as an explicit mask (positions 0..T-1) and,
    for an adaptive span, its soft mask renormalized. positions (B, T): full attention at those positions."""
    B, T, _ = x.shape
    H, KV, D = layer.n_heads, layer.n_kv_heads, layer.head_dim
    p = layer.params
    qkv = x @ p["W_qkv"] + p.get("b_qkv", 0.0)
    positions = np.broadcast_to(np.arange(T) if positions is None else positions, (B, T))
    blocked = dense_mask(layer.pattern, H, T)  # (H, T, T) at positions 0..T-1
    if not np.array_equal(positions, np.broadcast_to(np.arange(T), (B, T))):
        assert type(layer.pattern) is AttentionPattern  # other positions: full causal attention only
        blocked = positions[:, None, None, :] > positions[:, None, :, None]  # (B, 1, T, T)
    blocked = np.broadcast_to(blocked, (B, H, T, T))
    out = np.zeros((B, T, H * D))
    for b in range(B):
        for h in range(H):
            g = h // (H // KV)
            q = qkv[b, :, h * D:(h + 1) * D]
            k = qkv[b, :, (H + g) * D:(H + g + 1) * D]
            v = qkv[b, :, (H + KV + g) * D:(H + KV + g + 1) * D]
            if layer.rope_theta is not None:
                q = np.array([rotate(q[t], positions[b, t], layer.rope_theta) for t in range(T)])
                k = np.array([rotate(k[t], positions[b, t], layer.rope_theta) for t in range(T)])
            for t in range(T):
                scores = np.where(blocked[b, h, t], -np.inf, k @ q[t] / math.sqrt(D))
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                if isinstance(layer.pattern, AdaptiveSpan):
                    span = layer.pattern.params["span"][h] * layer.pattern.max_span
                    ramp = layer.pattern.ramp
                    weights = weights * np.clip((ramp + span - (t - np.arange(T))) / ramp, 0.0, 1.0)
                    weights /= weights.sum() + 1e-8
                out[b, t, h * D:(h + 1) * D] = weights @ v
    return out @ p["W_out"] + p.get("b_out", 0.0)


def adaptive_span():
    pattern = AdaptiveSpan(4, max_span=6, ramp=2, loss_coefficient=0.0, dtype=np.float64)
    pattern.params["span"][...] = [0.13, 0.37, 0.52, 0.05]  # off the soft mask's kinks
    return pattern


# Every pattern over 4 query heads in 2 key/value groups: the strided and fixed halves each own one key/value head.
PATTERNS = {"full": AttentionPattern, "sliding": lambda: SlidingWindow(3), "strided": lambda: Strided(3),
            "fixed": lambda: Fixed(3, 1), "adaptive span": adaptive_span}


# The strided and fixed patterns need whole key/value heads per half of the heads: not multi-query.
@pytest.mark.parametrize("pattern,n_kv_heads,rope_theta", [
    (pattern, n_kv_heads, rope_theta) for pattern in PATTERNS
    for n_kv_heads, rope_theta in [(2, None), (2, 100.0), (1, 100.0), (4, 100.0)]
    if n_kv_heads != 1 or pattern not in ("strided", "fixed")])
def test_layer_equals_the_per_head_loop(pattern, n_kv_heads, rope_theta):
    layer = make_attention(n_kv_heads=n_kv_heads, head_dim=4, rope_theta=rope_theta, pattern=PATTERNS[pattern]())
    x = np.random.default_rng(1).standard_normal((2, 11, 10))
    out = layer.forward(x)
    assert out.shape == (2, 11, 10)
    np.testing.assert_allclose(out, loop_reference(layer, x), rtol=0, atol=1e-12)


def test_layer_with_positions_rotates_by_them():
    """Given per-row positions (a left-padded row starts late), RoPE and the causal mask follow them."""
    layer = make_attention(n_kv_heads=2, head_dim=4, rope_theta=50.0)
    x = np.random.default_rng(2).standard_normal((2, 6, 10))
    positions = np.array([[0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12]])
    np.testing.assert_allclose(layer.forward(x, positions=positions), loop_reference(layer, x, positions),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("tiled", [False, True])
def test_layer_gradient_check(pattern, tiled):
    layer = make_attention(n_kv_heads=2, head_dim=4, rope_theta=100.0, pattern=PATTERNS[pattern](), dropout=0.2,
                           qkv_bias=True, bias=False, seed=3)
    if tiled:  # tiles of 3 queries from the first token on (recomputed in the backward)
        layer.pattern.tiled_from, layer.pattern.tile_size, layer.pattern.kept_scores = 1, 3, 0
    rng = np.random.default_rng(4)
    errors = check_layer(layer, rng.standard_normal((2, 8, 10)), rng, dropout_rng=layer.attention_dropout.rng,
                         max_count=20)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors
    assert ("pattern.span" in errors) == (pattern == "adaptive span")
    uses_tiles = any(isinstance(layout, TiledLayout) for _, layout, _ in layer.pattern.cache)
    assert uses_tiles == (tiled and pattern != "fixed")  # strided: its local half

# Llama-style models over the grouping choices: grouped (2 key/value heads of 4), multi-query (1), and a head_dim
# set apart from d_model / n_heads with the Qwen2 biases (q, k, v only).
VARIANTS = {
    "gqa": dict(n_kv_heads=2),
    "multi-query": dict(n_kv_heads=1),
    "head_dim, qkv_bias": dict(n_kv_heads=2, d_model=32, head_dim=12, bias=False, qkv_bias=True),
    "sliding window": dict(n_kv_heads=2, attention="sliding", window=5),
    "strided": dict(n_kv_heads=2, attention="strided", stride=3),
    "adaptive span": dict(n_kv_heads=2, adaptive_span=True, max_span=6, span_ramp=2),
}


def make_model(seed=0, **overrides):
    fields = dict(vocab_size=23, d_model=16, n_heads=4, n_layers=2, max_seq_len=32, dropout=0.0, init="gpt2",
                  positional="rope", norm="rmsnorm", activation="swiglu", norm_first=True, bias=False,
                  tie_weights=False, dtype="float64")
    model = TransformerLM(TransformerConfig(**{**fields, **overrides}), seed=seed)
    rng = np.random.default_rng(seed + 1000)
    for name, value in model.parameters().items():  # large enough weights that every head and bias shows
        value[...] = [0.13, 0.37, 0.52, 0.05] if name.endswith("span") else rng.normal(0.0, 0.3, value.shape)
    return model.eval()


def kv_bytes(state):
    return sum(cache.keys.nbytes + cache.values.nbytes for cache in state.kv_caches)


def test_kv_cache_holds_n_kv_heads_heads_a_third_of_multi_head():
    """n_kv_heads = n_heads / 3: the cache of the same prompt takes exactly a third of multi-head attention's."""
    prompt = np.random.default_rng(0).integers(0, 23, (2, 20))
    sizes = {}
    for n_kv_heads in (6, 2):
        model = make_model(d_model=24, n_heads=6, n_kv_heads=n_kv_heads, dtype="float32")
        state = DecodingState(model, 2, 30)
        decode(model, state, prompt)
        for _ in range(5):
            decode(model, state, np.array([[1], [2]]))
        assert all(cache.keys.shape[:2] == cache.values.shape[:2] == (2, n_kv_heads) for cache in state.kv_caches)
        assert all(cache.keys.shape[3] == 4 for cache in state.kv_caches)
        sizes[n_kv_heads] = kv_bytes(state)
    assert sizes[2] * 3 == sizes[6] > 0


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype,bound", [("float32", 1e-5), ("float64", 1e-10)])
def test_cached_logits_equal_the_full_forward_at_every_step(variant, dtype, bound):
    model = make_model(dtype=dtype, **VARIANTS[variant])
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 23, (3, 6))
    state = DecodingState(model, 3, 6 + 12)
    assert state.kv_caches[0].keys.shape[1] == model.config.n_kv_heads
    for logits, full in decoding_steps(model, state, ids, 12, rng):
        assert logits.dtype == full.dtype == np.dtype(dtype)
        assert np.abs(logits - full).max() <= bound * np.abs(full).max()


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padded_rows_equal_each_row_alone(variant):
    """Rotary positions follow the padding: each row of a ragged batch decodes as if it were alone, and as the
    full forward pass of that row alone."""
    model = make_model(**VARIANTS[variant])
    prompts = [[3, 1, 4, 1, 5, 9, 2, 6], [6], [5, 3, 5]]
    batch_state = DecodingState(model, 3, 8 + 5)
    batch_logits = decode(model, batch_state, *left_pad(prompts))
    rows = [list(prompt) for prompt in prompts]
    for step in range(5):
        for row, ids in enumerate(rows):
            np.testing.assert_allclose(batch_logits[row], model(np.array([ids]))[0, -1], rtol=0, atol=1e-10)
        tokens = np.array([[step], [step + 2], [step + 4]])
        for row, ids in enumerate(rows):
            ids.append(int(tokens[row, 0]))
        batch_logits = decode(model, batch_state, tokens)


def test_sliding_window_decodes_in_a_rolling_cache_past_max_seq_len():
    model = make_model(n_kv_heads=2, attention="sliding", window=5, max_seq_len=16)
    state = DecodingState(model, 1, 40)
    assert all(cache.rolling and cache.keys.shape == (1, 2, 5, 4) for cache in state.kv_caches)  # window slots
    prompt = np.array([[1, 2, 3, 4, 5, 6, 7]])
    generated = model.generate(prompt, 30, temperature=0)
    assert generated.shape == (1, 37)
    np.testing.assert_array_equal(generated, greedy_without_cache(model, prompt, 30))


def repeated_key_value_heads(gqa, mha):
    """Copy gqa's weights into mha (n_kv_heads = n_heads), each key/value head repeated for the query heads of
    its group: W_qkv columns [queries | keys | values], query head h reading key/value head h // group."""
    config = gqa.config
    H, D, n_kv = config.n_heads, config.head_dim, config.n_kv_heads
    group = H // n_kv
    heads = np.arange(H) // group  # the key/value head of each query head

    def columns(part):  # W_qkv columns of the (keys or values) heads that mha's heads read
        start = H * D + part * n_kv * D
        return (start + heads[:, None] * D + np.arange(D)).ravel()

    expanded = np.concatenate([np.arange(H * D), columns(0), columns(1)])
    for name, value in gqa.parameters().items():
        target = mha.parameters()[name]
        target[...] = value[..., expanded] if name.endswith(("W_qkv", "b_qkv")) else value
    return expanded


@pytest.mark.parametrize("n_kv_heads", [1, 2])
@pytest.mark.parametrize("options", [dict(), dict(positional="learned", norm="layernorm", activation="gelu",
                                                  bias=True, norm_first=False, tie_weights=True)])
def test_grouped_heads_equal_multi_head_attention_with_repeated_keys_and_values(n_kv_heads, options):
    """The grouping convention (transformers' repeat_kv) and the backward's sum over each group, checked
    against the plain multi-head model."""
    gqa = make_model(seed=3, n_kv_heads=n_kv_heads, **options).train()
    mha = make_model(seed=4, n_kv_heads=4, **options).train()
    expanded = repeated_key_value_heads(gqa, mha)
    rng = np.random.default_rng(5)
    ids, targets = rng.integers(0, 23, (2, 9)), rng.integers(0, 23, (2, 9))
    np.testing.assert_allclose(gqa(ids), mha(ids), rtol=0, atol=1e-12)
    assert gqa.loss(ids, targets) == pytest.approx(mha.loss(ids, targets), rel=1e-13)
    gqa_grads, mha_grads = gqa.backward(), mha.backward()
    for name, grad in gqa_grads.items():
        if name.endswith(("W_qkv", "b_qkv")):  # every column mha repeats adds up into gqa's one column
            summed = np.zeros_like(grad)
            np.add.at(summed.T, expanded, mha_grads[name].T)
            np.testing.assert_allclose(grad, summed, rtol=0, atol=1e-12, err_msg=name)
        else:
            np.testing.assert_allclose(grad, mha_grads[name], rtol=0, atol=1e-12, err_msg=name)


def test_n_kv_heads_equal_to_n_heads_is_the_multi_head_model():
    default = make_model(seed=6, positional="learned")
    explicit = make_model(seed=6, positional="learned", n_kv_heads=4, head_dim=4, qkv_bias=False)
    assert default.config == explicit.config
    shapes = {name: value.shape for name, value in default.parameters().items()}
    assert shapes["decoder.blocks.0.attention.W_qkv"] == (16, 48)          # (C, 3C), as before
    assert shapes["decoder.blocks.0.attention.W_out"] == (16, 16)
    assert shapes == {name: value.shape for name, value in explicit.parameters().items()}
    ids = np.random.default_rng(7).integers(0, 23, (2, 7))
    np.testing.assert_array_equal(default(ids), explicit(ids))


@pytest.mark.parametrize("variant", ["multi-query", "head_dim, qkv_bias"])
def test_whole_model_gradient_check_with_dropout(variant):
    model = make_model(seed=8, dropout=0.1, **VARIANTS[variant]).train()
    rng = np.random.default_rng(9)
    ids, targets = rng.integers(0, 23, (2, 7)), rng.integers(0, 23, (2, 7))
    errors = check_model(model, ids, targets, rng, max_count=8)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


def test_multi_query_cache_has_one_head():
    model = make_model(n_kv_heads=1)
    state = DecodingState(model, 2, 10)
    decode(model, state, np.array([[1, 2, 3], [4, 5, 6]]))
    for cache in state.kv_caches:  # one key head and one value head, whatever n_heads
        assert cache.keys.shape[:2] == cache.values.shape[:2] == (2, 1) and cache.keys.shape[3] == 4


BASE = dict(vocab_size=11, d_model=8, n_heads=4)


@pytest.mark.parametrize("fields,error,message", [
    (dict(n_kv_heads=3), ValueError, r"n_kv_heads \(3\) must divide n_heads \(4\)"),
    (dict(n_kv_heads=8), ValueError, r"n_kv_heads \(8\) must divide n_heads \(4\)"),
    (dict(n_kv_heads=0), ValueError, "n_kv_heads must be a positive integer"),
    (dict(n_kv_heads=-2), ValueError, "n_kv_heads must be a positive integer"),
    (dict(n_kv_heads=True), (TypeError, ValueError), "n_kv_heads"),
    (dict(n_kv_heads=2.0), (TypeError, ValueError), "n_kv_heads"),
    (dict(head_dim=0), ValueError, "head_dim must be a positive integer"),
    (dict(head_dim=3.0), (TypeError, ValueError), "head_dim"),
    (dict(head_dim=False), (TypeError, ValueError), "head_dim"),
    (dict(head_dim=5, positional="rope"), ValueError, "head_dim must be even"),
    (dict(d_model=10, positional="rope", n_heads=2), ValueError, "head_dim must be even"),  # 10 / 2 = 5
    (dict(d_model=9), ValueError, r"d_model \(9\) must be divisible by n_heads \(4\)"),
    (dict(qkv_bias=1), TypeError, "qkv_bias must be True or False"),
    (dict(qkv_bias="yes"), TypeError, "qkv_bias must be True or False"),
    (dict(rope_theta=0.0, positional="rope"), ValueError, "rope_theta must be positive"),
    (dict(rope_theta=float("inf"), positional="rope"), ValueError, "rope_theta must be positive"),
    (dict(rope_theta="1e4", positional="rope"), TypeError, "rope_theta must be a number"),
    (dict(attention="strided", stride=3, n_kv_heads=1), ValueError, "n_kv_heads must be even"),
    (dict(attention="fixed", stride=4, summary=2, n_kv_heads=1), ValueError, "n_kv_heads must be even"),
    (dict(attention="strided", stride=3, n_heads=6, d_model=12, n_kv_heads=3), ValueError, "n_kv_heads must be even"),
])
def test_bad_configs(fields, error, message):
    with pytest.raises(error, match=message):
        TransformerConfig(**{**BASE, **fields})


def test_good_configs_resolve_their_defaults():
    config = TransformerConfig(**BASE)
    assert (config.n_kv_heads, config.head_dim, config.qkv_bias) == (4, 2, True)
    config = TransformerConfig(**BASE, bias=False)
    assert config.qkv_bias is False
    config = TransformerConfig(**{**BASE, "d_model": 10}, head_dim=6, n_kv_heads=np.int64(2), positional="rope",
                               bias=False, qkv_bias=True)
    assert (config.n_kv_heads, config.head_dim, config.qkv_bias) == (2, 6, True)
    assert type(config.n_kv_heads) is int  # a NumPy integer becomes a Python one
    assert TransformerConfig(**BASE, attention="strided", stride=3, n_kv_heads=2).n_kv_heads == 2
    shapes = config.parameter_shapes()
    assert shapes["decoder.blocks.0.attention.W_qkv"] == (10, (4 + 2 * 2) * 6)
    assert shapes["decoder.blocks.0.attention.b_qkv"] == ((4 + 2 * 2) * 6,)
    assert shapes["decoder.blocks.0.attention.W_out"] == (4 * 6, 10)
    assert "decoder.blocks.0.attention.b_out" not in shapes


@pytest.mark.parametrize("variant", ["gqa", "sliding window"])
def test_kv_cache_decoding_equals_the_tiled_full_forward_of_a_long_sequence(variant):
    """From 512 tokens the full forward runs in tiles; decoding attends densely from cached, rotated keys."""
    model = make_model(max_seq_len=600, n_layers=1, **VARIANTS[variant])
    rng = np.random.default_rng(10)
    ids = rng.integers(0, 23, (2, 514))
    for logits, full in decoding_steps(model, DecodingState(model, 2, 520), ids, 4, rng):
        assert all(isinstance(layout, TiledLayout) for _, layout, _ in model.attention_patterns()[0].cache)
        np.testing.assert_allclose(logits, full, rtol=0, atol=1e-10 * np.abs(full).max())

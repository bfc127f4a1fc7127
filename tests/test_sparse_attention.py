import math
import tracemalloc

import numpy as np
import pytest
from conftest import decoding_steps
from gradcheck import RELATIVE_ERROR_BOUND, check_layer, check_model

from attention import CausalSelfAttention, KVCache
from generation import DecodingState, decode, greedy_without_cache, left_pad
from sparse_attention import (
    AdaptiveSpan,
    Fixed,
    SlidingWindow,
    Strided,
    adaptive_spans,
    dense_mask,
    span_summary,
)
from transformer_lm import TransformerConfig, TransformerLM

# Spans z / max_span chosen off the kinks of the soft mask (z * max_span not an integer), so that
# finite differences see a smooth function.
SPANS = [0.13, 0.37, 0.52, 0.05]


def adaptive_span(max_span=10, ramp=3, dtype=np.float64):
    pattern = AdaptiveSpan(4, max_span, ramp, 0.0, dtype)
    pattern.params["span"][...] = SPANS
    return pattern


# Sequence length 13 is a multiple of no block size below, so every layout pads.
LAYER_PATTERNS = {
    "sliding": lambda: SlidingWindow(3),
    "sliding, window >= T": lambda: SlidingWindow(20),
    "strided": lambda: Strided(3),
    "fixed": lambda: Fixed(4, 2),
    "fixed, summary 1": lambda: Fixed(3, 1),
    "adaptive span": adaptive_span,
}


def allowed_keys(name, query, n_heads=4):
    """For each head, the keys that query may see, written as the papers define the patterns."""
    if name == "sliding":                           # window 5, counting the query itself
        return [set(range(max(0, query - 4), query + 1))] * n_heads
    if name == "strided":                           # stride 4: local half, then strided half
        local = set(range(max(0, query - 3), query + 1))
        strided = set(range(query, -1, -4))
        return [local] * (n_heads // 2) + [strided] * (n_heads // 2)
    if name == "fixed":                             # stride 5, summary 2
        block = set(range(query - query % 5, query + 1))
        summaries = {key for key in range(query + 1) if key % 5 >= 3} | {query}
        return [block] * (n_heads // 2) + [summaries] * (n_heads // 2)
    raise ValueError(name)


@pytest.mark.parametrize("name,pattern", [("sliding", SlidingWindow(5)), ("strided", Strided(4)),
                                          ("fixed", Fixed(5, 2))])
def test_masks_follow_the_definitions(name, pattern):
    mask = dense_mask(pattern, 4, 23)
    for query in range(23):
        for head, keys in enumerate(allowed_keys(name, query)):
            assert set(np.flatnonzero(~mask[head, query])) == keys, (head, query)


def test_window_counts_the_query_itself():
    np.testing.assert_array_equal(dense_mask(SlidingWindow(1), 1, 6)[0], ~np.eye(6, dtype=bool))
    np.testing.assert_array_equal(dense_mask(SlidingWindow(6), 1, 6)[0], np.triu(np.ones((6, 6), dtype=bool), k=1))
    assert (~dense_mask(SlidingWindow(3), 1, 10)[0]).sum(axis=1).tolist() == [1, 2] + [3] * 8


def make_layer(pattern, n_heads=4, dropout=0.0, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    layer = CausalSelfAttention(8, n_heads, dropout, np.random.default_rng(seed + 100), dtype, pattern=pattern)
    for value in layer.params.values():
        value[...] = rng.standard_normal(value.shape) * 0.5
    return layer


def reference_attention(layer, x):
    """Textbook attention, one head at a time, with the pattern written out as an explicit (T, T) mask and,
    for an adaptive span, the soft mask m(i - j) = clamp((R + z - (i - j)) / R, 0, 1) renormalized."""
    B, T, C = x.shape
    H, D = layer.n_heads, C // layer.n_heads
    p = layer.params
    qkv = x @ p["W_qkv"] + p["b_qkv"]
    blocked = dense_mask(layer.pattern, H, T)
    distances = np.arange(T)[:, None] - np.arange(T)[None, :]
    out = np.zeros_like(x)
    for b in range(B):
        for h in range(H):
            q, k, v = (qkv[b, :, part * C + h * D: part * C + (h + 1) * D] for part in range(3))
            scores = np.where(blocked[h], -np.inf, q @ k.T / math.sqrt(D))
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            if isinstance(layer.pattern, AdaptiveSpan):
                span = layer.pattern.params["span"][h] * layer.pattern.max_span
                ramp = layer.pattern.ramp
                weights = weights * np.clip((ramp + span - distances) / ramp, 0.0, 1.0)
                weights /= weights.sum(axis=1, keepdims=True) + 1e-8
            out[b, :, h * D:(h + 1) * D] = weights @ v
    return out @ p["W_out"] + p["b_out"]


@pytest.mark.parametrize("name", LAYER_PATTERNS)
def test_blocked_layouts_equal_dense_attention_with_the_explicit_mask(name):
    layer = make_layer(LAYER_PATTERNS[name]())
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 13, 8))
    dout = rng.standard_normal((2, 13, 8))
    out = layer.forward(x)
    np.testing.assert_allclose(out, reference_attention(layer, x), atol=1e-10)
    layer.zero_grad()
    grads = {"input": layer.backward(dout), **{name: grad.copy() for name, grad in layer.gradients().items()}}
    # Given positions, every head group attends densely under the same rules: the masked reference.
    np.testing.assert_allclose(layer.forward(x, positions=np.arange(13)), out, atol=1e-10)
    layer.zero_grad()
    dense_grads = {"input": layer.backward(dout), **layer.gradients()}
    for key, grad in grads.items():
        np.testing.assert_allclose(grad, dense_grads[key], atol=1e-10, err_msg=key)


@pytest.mark.parametrize("name", LAYER_PATTERNS)
def test_changing_later_tokens_leaves_earlier_outputs_unchanged(name):
    layer = make_layer(LAYER_PATTERNS[name](), seed=2)
    x = np.random.default_rng(3).standard_normal((1, 13, 8))
    changed = x.copy()
    changed[:, 8:] += 10.0
    np.testing.assert_allclose(layer.forward(x)[:, :8], layer.forward(changed)[:, :8], atol=1e-12)


@pytest.mark.parametrize("name,dropout", [(name, 0.0) for name in LAYER_PATTERNS] + [("strided", 0.2),
                                                                                      ("adaptive span", 0.2)])
def test_layer_gradient_check(name, dropout):
    layer = make_layer(LAYER_PATTERNS[name](), dropout=dropout, seed=4)
    rng = np.random.default_rng(5)
    errors = check_layer(layer, rng.standard_normal((2, 13, 8)), rng, dropout_rng=layer.attention_dropout.rng,
                         max_count=25)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors
    assert ("pattern.span" in errors) == (name == "adaptive span")


def test_sliding_window_is_linear_in_memory_at_long_sequences():
    layer = make_layer(SlidingWindow(256), n_heads=1, dtype=np.float32)
    x = np.random.default_rng(6).standard_normal((1, 8192, 8)).astype(np.float32)
    tracemalloc.start()
    try:
        out = layer.forward(x)
        layer.backward(np.ones_like(out))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_dense_score_matrix = 8192 * 8192 * 4
    assert np.all(np.isfinite(out))
    assert peak < one_dense_score_matrix / 2, peak / 2**20


def test_adaptive_span_computes_only_its_current_window():
    pattern = adaptive_span(max_span=64, ramp=4)
    layer = make_layer(pattern)
    x = np.random.default_rng(7).standard_normal((1, 100, 8))
    keys_per_block = []
    for spans in ([1.0] * 4, SPANS):
        pattern.params["span"][...] = spans
        layer.forward(x)
        layout = pattern.cache[0][1]
        keys_per_block.append(layout.key_positions.shape[-1])
    assert pattern.window == math.ceil(0.52 * 64) + 4
    assert keys_per_block == [2 * 64, 2 * pattern.window]  # blocks of `window` queries, two blocks of keys


def test_adaptive_span_float32_stays_float32():
    layer = make_layer(adaptive_span(dtype=np.float32), dtype=np.float32)
    out = layer.forward(np.ones((1, 13, 8), dtype=np.float32))
    dx = layer.backward(np.ones_like(out))
    assert out.dtype == dx.dtype == layer.pattern.grads["span"].dtype == np.float32
    kept = [value for value in layer.pattern.cache[0][2] if isinstance(value, np.ndarray)]
    assert len(kept) == 8 and {value.dtype for value in kept} == {np.dtype(np.float32)}


MODEL_PATTERNS = {
    "sliding": dict(attention="sliding", window=3),
    "strided": dict(attention="strided", stride=3),
    "fixed": dict(attention="fixed", stride=4, summary=2),
    "adaptive span": dict(adaptive_span=True, max_span=8, span_ramp=2, span_loss_coefficient=0.01),
}


def small_model(pattern, seed=0, **overrides):
    config = dict(vocab_size=11, d_model=8, n_heads=2, n_layers=2, max_seq_len=16, dropout=0.0, dtype="float64")
    model = TransformerLM(TransformerConfig(**{**config, **MODEL_PATTERNS[pattern], **overrides}), seed=seed)
    for index, span in enumerate(adaptive_spans(model)):
        span.params["span"][...] = [0.31 + 0.2 * index, 0.07]  # off the soft mask's kinks
    return model


@pytest.mark.parametrize("pattern", MODEL_PATTERNS)
def test_whole_model_gradient_check(pattern):
    model = small_model(pattern, seed=1, dropout=0.1, norm_first=True).train()
    rng = np.random.default_rng(8)
    ids, targets = rng.integers(0, 11, (2, 9)), rng.integers(0, 11, (2, 9))
    errors = check_model(model, ids, targets, np.random.default_rng(9), max_count=10)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


def test_span_penalty_is_added_in_training_only():
    model = small_model("adaptive span")
    ids, targets = np.arange(9)[None] % 11, np.arange(1, 10)[None] % 11
    spans = span_summary(model)
    expected = 0.01 * sum(np.mean(layer) for layer in spans)
    assert model.train().loss(ids, targets) == pytest.approx(model.eval().loss(ids, targets) + expected, rel=1e-12)


def test_after_step_clamps_the_spans_and_span_summary():
    model = small_model("adaptive span")
    names = [name for name in model.parameters() if name.endswith("span")]
    assert names == ["decoder.blocks.0.attention.pattern.span", "decoder.blocks.1.attention.pattern.span"]
    model.parameters()[names[0]][...] = [-0.5, 1.25]
    model.after_step()  # the hook a trainer calls after each optimizer step reaches every layer's span
    assert span_summary(model) == [[0.0, 8.0], [pytest.approx(0.51 * 8), pytest.approx(0.07 * 8)]]
    assert span_summary(small_model("sliding")) == []


@pytest.mark.parametrize("pattern", MODEL_PATTERNS)
def test_cached_logits_equal_the_full_forward_at_every_step(pattern):
    model = small_model(pattern, seed=2).eval()
    rng = np.random.default_rng(10)
    ids = rng.integers(0, 11, (2, 5))
    state = DecodingState(model, 2, 5 + 10)
    assert state.kv_caches[0].rolling == (pattern in ("sliding", "adaptive span"))
    for logits, full_logits in decoding_steps(model, state, ids, 10, rng):
        np.testing.assert_allclose(logits, full_logits, atol=1e-10)


@pytest.mark.parametrize("pattern", MODEL_PATTERNS)
def test_left_padded_batch_matches_each_prompt_alone(pattern):
    # The rows' positions differ by their padding, which shifts the fixed pattern's blocks.
    model = small_model(pattern, seed=3).eval()
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6], [5, 3, 5, 8, 9]]
    batch_state = DecodingState(model, 3, 7 + 6)
    batch_logits = decode(model, batch_state, *left_pad(prompts))
    alone_states = [DecodingState(model, 1, len(prompt) + 6) for prompt in prompts]
    alone_logits = [decode(model, state, np.array([prompt])) for state, prompt in zip(alone_states, prompts)]
    for step in range(6):
        np.testing.assert_allclose(batch_logits, np.concatenate(alone_logits), atol=1e-10)
        tokens = np.array([[step], [step + 2], [step + 4]])
        batch_logits = decode(model, batch_state, tokens)
        alone_logits = [decode(model, state, tokens[row:row + 1]) for row, state in enumerate(alone_states)]


def test_sliding_generation_runs_past_max_seq_len_in_a_rolling_cache():
    model = small_model("sliding", seed=4, positional="sinusoidal")
    generated = model.generate([1, 2, 3, 4, 5], 30, temperature=0)
    assert len(generated) == 35 > model.config.max_seq_len
    np.testing.assert_array_equal(generated, greedy_without_cache(model.eval(), np.array([[1, 2, 3, 4, 5]]), 30)[0])
    assert DecodingState(model, 1, 35).kv_caches[0].keys.shape[2] == 3  # window slots, not 35


def test_rolling_cache_keeps_the_last_capacity_positions():
    cache = KVCache(1, 1, 3, 1, np.float64, rolling=True)
    keys, _, positions = cache.append(np.arange(5.0).reshape(1, 1, 5, 1), np.zeros((1, 1, 5, 1)), np.arange(5)[None])
    assert sorted(positions[0].tolist()) == [-1, -1, -1, 0, 1, 2, 3, 4]
    _, _, positions = cache.append(np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1)), np.array([[5]]))
    assert sorted(positions[0].tolist()) == [2, 3, 4, 5]


BASE = dict(vocab_size=11, d_model=8, n_heads=2)


@pytest.mark.parametrize("fields,message", [
    (dict(attention="local"), "attention must be one of"),
    (dict(attention="sliding"), "window must be a positive integer for attention='sliding', got None"),
    (dict(attention="sliding", window=0), "window must be a positive integer"),
    (dict(attention="sliding", window=2.5), "window must be a positive integer"),
    (dict(attention="strided"), "stride must be a positive integer"),
    (dict(attention="strided", stride=4, n_heads=1, d_model=8), "n_heads must be even for attention='strided'"),
    (dict(attention="fixed", stride=4), "summary must be a positive integer"),
    (dict(attention="fixed", stride=4, summary=5), "summary must be at most stride"),
    (dict(window=4), r"window is only used with attention in \['sliding'\]; got window=4 with attention='full'"),
    (dict(attention="sliding", window=4, stride=2), "stride is only used with attention in"),
    (dict(max_span=8), "max_span is only used with adaptive_span=True"),
    (dict(adaptive_span=True), "max_span must be a positive integer"),
    (dict(adaptive_span=True, max_span=8, span_ramp=0), "span_ramp must be a positive integer"),
    (dict(adaptive_span=True, max_span=8, span_loss_coefficient=-1.0), "span_loss_coefficient must be"),
    (dict(adaptive_span=True, max_span=8, attention="sliding", window=4), "adaptive_span needs attention='full'"),
    (dict(adaptive_span=True, max_span=200, positional="learned"), r"max_span \(200\) must not exceed max_seq_len"),
])
def test_bad_configs(fields, message):
    with pytest.raises(ValueError, match=message):
        TransformerConfig(**{**BASE, **fields})


def test_adaptive_span_must_be_a_bool_and_long_spans_are_fine_with_sinusoidal_positions():
    with pytest.raises(TypeError, match="adaptive_span must be True or False"):
        TransformerConfig(**BASE, adaptive_span=1, max_span=8)
    assert TransformerConfig(**BASE, adaptive_span=True, max_span=200, positional="sinusoidal").max_span == 200

import numpy as np
import pytest
from conftest import require_oracle
from gradcheck import RELATIVE_ERROR_BOUND, check_gradients, check_model, relative_error
from test_module import SquaredPenalty
from torch_reference import reference_gradients

from transformer_lm import IGNORE_INDEX, PRESETS, TransformerConfig, TransformerLM

VARIANTS = [dict(norm_first=norm_first, positional=positional, tie_weights=tie)
            for norm_first in (False, True) for positional in ("sinusoidal", "learned") for tie in (True, False)]
# The modern components (norm, activation, bias) over both residual arrangements, positions and heads.
MODERN_VARIANTS = [
    dict(norm="rmsnorm", activation="swiglu", bias=False, norm_first=True, positional="learned", tie_weights=False),
    dict(norm="rmsnorm", activation="swiglu", bias=False, norm_first=True, positional="sinusoidal", tie_weights=True),
    dict(norm="rmsnorm", activation="gelu_tanh", bias=True, norm_first=False, positional="sinusoidal",
         tie_weights=True),
    dict(norm="layernorm", activation="swiglu", bias=True, norm_first=False, positional="learned", tie_weights=False),
    dict(norm="layernorm", activation="gelu_tanh", bias=False, norm_first=True, positional="learned",
         tie_weights=True),
]


def small_model(seed=0, **overrides):
    config = TransformerConfig(**{**dict(vocab_size=11, d_model=8, n_heads=2, n_layers=2, max_seq_len=12,
                                         dropout=0.0, dtype="float64"), **overrides})
    return TransformerLM(config, seed=seed)


def random_batch(model, shape, seed=0, ignore_fraction=0.0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, model.config.vocab_size, shape)
    targets = rng.integers(0, model.config.vocab_size, shape)
    targets[rng.random(shape) < ignore_fraction] = IGNORE_INDEX
    targets.flat[0] = 0  # at least one target counts
    return ids, targets


@pytest.mark.parametrize("variant", VARIANTS + MODERN_VARIANTS)
def test_shapes(variant):
    model = small_model(**variant, dtype="float32")
    ids, targets = random_batch(model, (3, 5))
    logits = model(ids)
    assert logits.shape == (3, 5, 11) and logits.dtype == np.float32
    np.testing.assert_array_equal(logits, model.forward(ids))
    assert isinstance(model.loss(ids, targets), float)
    grads = model.backward()
    params = model.parameters()
    assert grads.keys() == params.keys()
    assert all(grads[name].shape == params[name].shape for name in params)
    assert ("lm_head.weight" in params) == (not variant["tie_weights"])


@pytest.mark.parametrize("variant", VARIANTS[::3])
def test_changing_later_tokens_leaves_earlier_logits_unchanged(variant):
    model = small_model(**variant)
    ids, _ = random_batch(model, (2, 9), seed=1)
    changed = ids.copy()
    changed[:, 5:] = (changed[:, 5:] + 3) % 11
    before, after = model(ids), model(changed)
    np.testing.assert_allclose(before[:, :5], after[:, :5], atol=1e-12)
    assert not np.allclose(before[:, 5:], after[:, 5:])


def test_loss_is_the_mean_cross_entropy_over_targets_that_count():
    model = small_model(seed=3)
    ids, targets = random_batch(model, (3, 6), seed=4, ignore_fraction=0.4)
    logits = model(ids)
    log_probs = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    counted = [(b, t) for b in range(3) for t in range(6) if targets[b, t] != IGNORE_INDEX]
    expected = -np.mean([log_probs[b, t, targets[b, t]] for b, t in counted])
    assert len(counted) < 18
    assert model.loss(ids, targets) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("variant", VARIANTS + MODERN_VARIANTS)
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_whole_model_gradient_check(variant, dropout):
    model = small_model(seed=5, dropout=dropout, **variant).train()
    ids, targets = random_batch(model, (2, 5), seed=6, ignore_fraction=0.3)
    errors = check_model(model, ids, targets, np.random.default_rng(7), max_count=12)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


def test_a_penalty_of_any_layer_enters_the_training_loss_and_its_gradient():
    model = small_model(seed=3)
    # A layer the model knows nothing about, deep in the tree: its hooks are found like the adaptive span's.
    model.decoder.blocks[1].feed_forward.regularizer = SquaredPenalty([0.3, -0.7], 0.1)
    ids, targets = random_batch(model, (2, 5), seed=4)
    plain = model.eval().loss(ids, targets)
    assert model.train().loss(ids, targets) == pytest.approx(plain + 0.1 * (0.3 ** 2 + 0.7 ** 2), rel=1e-12)
    analytic = {name: grad.copy() for name, grad in model.backward().items()}
    np.testing.assert_allclose(analytic["decoder.blocks.1.feed_forward.regularizer.w"], [0.06, -0.14], rtol=1e-12)
    errors = check_gradients(lambda: model.loss(ids, targets), analytic, model.parameters(),
                             np.random.default_rng(5), max_count=8)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors

    model.eval().loss(ids, targets)  # evaluation leaves the penalty out of the gradient too
    assert not model.backward()["decoder.blocks.1.feed_forward.regularizer.w"].any()


@pytest.mark.parametrize("overrides, pattern_window", [(dict(), None), (dict(attention="sliding", window=4), 4)])
def test_attention_patterns_are_the_live_pattern_of_every_layer(overrides, pattern_window):
    model = small_model(n_layers=3, **overrides)
    patterns = model.attention_patterns()
    assert len(patterns) == 3 and len({id(pattern) for pattern in patterns}) == 3  # one object per layer
    assert all(pattern is block.attention.pattern for pattern, block in zip(patterns, model.decoder.blocks))
    assert [pattern.window for pattern in patterns] == [pattern_window] * 3


ORACLE_CASES = [
    dict(shape=(2, 7), vocab_size=13, d_model=12, n_heads=3, n_layers=2),
    dict(shape=(3, 5), vocab_size=7, d_model=10, n_heads=5, n_layers=1, d_ff=9),
    dict(shape=(1, 9), vocab_size=17, d_model=6, n_heads=1, n_layers=3, activation="gelu"),
]


@pytest.mark.parametrize("case", ORACLE_CASES)
@pytest.mark.parametrize("variant", VARIANTS + MODERN_VARIANTS)
@pytest.mark.parametrize("dtype,bound", [("float64", 1e-9), ("float32", 1e-4)])
def test_against_pytorch_autograd(case, variant, dtype, bound):
    torch = require_oracle("torch")
    case = dict(case)
    shape = case.pop("shape")
    model = small_model(seed=8, dtype=dtype, init="gpt2", **{**case, **variant})
    assert_matches_pytorch(torch, model, shape, bound)


def assert_matches_pytorch(torch, model, shape, bound):
    """Logits, loss and every gradient of `model` on a random batch of `shape` against tests/torch_reference.py,
    within `bound` (relative), after moving the norms' gains and the biases off their defaults."""
    for name, value in model.parameters().items():
        if value.ndim == 1 and not name.endswith("span"):
            value += np.random.default_rng(len(name)).normal(0.0, 0.1, value.shape).astype(value.dtype)
    ids, targets = random_batch(model, shape, seed=9, ignore_fraction=0.2)
    loss = model.loss(ids, targets)
    grads = model.backward()
    logits = model(ids)
    torch_logits, torch_loss, torch_grads = reference_gradients(torch, model, ids, targets)
    assert relative_error(logits, torch_logits) < bound
    assert loss == pytest.approx(torch_loss, rel=bound)
    errors = {name: relative_error(grads[name], torch_grads[name]) for name in grads}
    assert max(errors.values()) < bound, errors


# Issue 12's options together, over 4 query heads: rotary positions, grouped-query (2 key/value heads) and
# multi-query (1) attention, head_dim set apart from d_model / n_heads, the Qwen2 q/k/v biases with bias=False,
# Mistral's sliding window, and the sparse patterns and the adaptive span over grouped heads.
LLAMA = dict(positional="rope", norm="rmsnorm", activation="swiglu", bias=False, norm_first=True)
CORE_VARIANTS = {
    "llama gqa untied": dict(**LLAMA, n_kv_heads=2, tie_weights=False),
    "rope multi-query tied post-LN": dict(positional="rope", rope_theta=500.0, n_kv_heads=1, tie_weights=True),
    "qwen2 head_dim 12": dict(**LLAMA, d_model=32, head_dim=12, n_kv_heads=2, qkv_bias=True, tie_weights=False),
    "learned gqa head_dim 6": dict(positional="learned", n_kv_heads=2, head_dim=6, norm_first=True),
    "mistral sliding 5": dict(**LLAMA, n_kv_heads=2, attention="sliding", window=5, tie_weights=True),
    "rope strided gqa": dict(positional="rope", n_kv_heads=2, attention="strided", stride=3, norm_first=True),
    "fixed gqa": dict(positional="sinusoidal", n_kv_heads=2, attention="fixed", stride=3, summary=1),
    "rope adaptive span gqa": dict(**LLAMA, n_kv_heads=2, adaptive_span=True, max_span=6, span_ramp=2,
                                   span_loss_coefficient=0.01),
}


def core_model(variant, **overrides):
    model = small_model(**{**dict(d_model=16, n_heads=4, max_seq_len=16), **CORE_VARIANTS[variant], **overrides})
    for name, value in model.parameters().items():
        if name.endswith("pattern.span"):  # spans (x max_span 6 tokens) off the soft mask's kinks
            value[...] = [0.13, 0.37, 0.52, 0.05]
    return model


@pytest.mark.parametrize("variant", CORE_VARIANTS)
def test_core_options_whole_model_gradient_check(variant):
    model = core_model(variant, seed=5, dropout=0.1).train()
    ids, targets = random_batch(model, (2, 9), seed=6, ignore_fraction=0.3)
    errors = check_model(model, ids, targets, np.random.default_rng(7), max_count=10)
    assert max(errors.values()) < RELATIVE_ERROR_BOUND, errors


@pytest.mark.parametrize("variant", CORE_VARIANTS)
@pytest.mark.parametrize("dtype,bound", [("float64", 1e-9), ("float32", 1e-4)])
def test_core_options_against_pytorch_autograd(variant, dtype, bound):
    torch = require_oracle("torch")
    assert_matches_pytorch(torch, core_model(variant, seed=8, dtype=dtype, init="gpt2"), (2, 9), bound)


@pytest.mark.parametrize("variant", ["llama gqa untied", "mistral sliding 5"])
def test_long_sequences_run_tiled_with_rope_and_grouped_heads_against_pytorch(variant):
    """From 512 tokens full and windowed heads run in tiles (attention.TiledLayout): the same model there."""
    torch = require_oracle("torch")
    model = core_model(variant, seed=10, init="gpt2", d_model=8, head_dim=4, n_layers=1, max_seq_len=520)
    assert_matches_pytorch(torch, model, (1, 520), 1e-9)
    assert all(type(layout).__name__ == "TiledLayout" for pattern in model.attention_patterns()
               for _, layout, _ in pattern.cache)


@pytest.mark.parametrize("options", [dict(activation="gelu"), dict(norm="rmsnorm", activation="swiglu", bias=False),
                                     dict(CORE_VARIANTS["rope adaptive span gqa"], qkv_bias=True, head_dim=6)])
def test_float32_mode_creates_no_float64_arrays(options):
    model = small_model(**{**dict(dtype="float32", dropout=0.1, norm_first=True, positional="learned"), **options})
    ids, targets = random_batch(model, (2, 6))
    model.train()
    model.loss(ids, targets)
    grads = model.backward()
    seen = []

    def collect(value):
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            seen.append(value.dtype)
        elif isinstance(value, (tuple, list)):
            for item in value:
                collect(item)

    for _, module in model.named_modules():
        for value in vars(module).values():
            collect(value)
    collect(list(grads.values()))
    collect(model(ids))
    assert len(seen) > 50 and set(seen) == {np.dtype(np.float32)}


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_bias_false_removes_every_linear_and_norm_bias(norm):
    names = small_model(norm=norm, activation="swiglu", bias=False, norm_first=True).parameters()
    with_bias = small_model(norm=norm, activation="swiglu", bias=True, norm_first=True).parameters()
    removed = sorted(set(with_bias) - set(names))
    norm_biases = [f"decoder.blocks.{i}.{n}.bias" for i in (0, 1) for n in ("norm1", "norm2")]
    expected = [f"decoder.blocks.{i}.feed_forward.{b}" for i in (0, 1) for b in ("b_gate", "b_in", "b_out")]
    expected += [f"decoder.blocks.{i}.attention.{b}" for i in (0, 1) for b in ("b_qkv", "b_out")]
    if norm == "layernorm":
        expected += [*norm_biases, "decoder.final_norm.bias"]
    assert removed == sorted(expected) and set(names) < set(with_bias)
    if norm == "rmsnorm":  # a gain only, whatever bias says
        assert not any(name.endswith(".bias") for name in with_bias)


@pytest.mark.parametrize("norm,activation", [("rmsnorm", "swiglu"), ("layernorm", "swiglu"), ("rmsnorm", "gelu")])
def test_new_options_change_the_function(norm, activation):
    """Each option reaches the model: the same weights give other logits than with the GPT-2 components."""
    model = small_model(seed=4, norm=norm, activation=activation, norm_first=True)
    reference = small_model(seed=4, norm_first=True)
    for name, value in reference.parameters().items():
        if name in model.parameters():
            model.parameters()[name][...] = value
    ids, _ = random_batch(model, (2, 5))
    assert not np.allclose(model(ids), reference(ids))


def test_xavier_statistics():
    model = TransformerLM(TransformerConfig(vocab_size=300, d_model=96, n_heads=4, n_layers=2), seed=0)
    for name, value in model.parameters().items():
        if value.ndim == 2:
            bound = np.sqrt(6.0 / (value.shape[0] + value.shape[1]))
            assert np.abs(value).max() <= bound, name
            assert abs(value.std() - bound / np.sqrt(3.0)) < 0.05 * bound / np.sqrt(3.0), name
            assert abs(value.mean()) < 0.05 * bound, name
        elif name.endswith("norm1.weight") or name.endswith("norm2.weight"):
            assert np.all(value == 1.0)
        else:
            assert np.all(value == 0.0), name


def test_gpt2_initialization_statistics():
    model = TransformerLM(TransformerConfig(vocab_size=300, d_model=96, n_heads=4, n_layers=3, init="gpt2"), seed=0)
    for name, value in model.parameters().items():
        if value.ndim == 2:
            expected = 0.02 / np.sqrt(6) if name.endswith("W_out") else 0.02
            assert abs(value.std() - expected) < 0.05 * expected, name


def test_seed_determines_weights_and_parameters_are_live():
    first, second, other = small_model(seed=1), small_model(seed=1), small_model(seed=2)
    for name, value in first.parameters().items():
        np.testing.assert_array_equal(value, second.parameters()[name])
    assert not np.array_equal(first.parameters()["decoder.token_embedding.weight"],
                              other.parameters()["decoder.token_embedding.weight"])
    ids, _ = random_batch(first, (1, 4))
    before = first(ids)
    # A feature-dependent shift (a constant one would vanish in the next LayerNorm).
    first.parameters()["decoder.blocks.0.feed_forward.b_out"] += np.arange(8.0)
    assert not np.allclose(before, first(ids))


def test_dropout_on_in_train_mode_and_off_in_eval_mode():
    model = small_model(dropout=0.5)
    ids, _ = random_batch(model, (2, 6))
    model.train()
    assert not np.allclose(model(ids), model(ids))
    model.eval()
    np.testing.assert_array_equal(model(ids), model(ids))


def test_presets():
    gpt2 = TransformerConfig.from_preset("gpt2")
    assert (gpt2.n_layers, gpt2.n_heads, gpt2.d_model, gpt2.vocab_size, gpt2.max_seq_len) == (12, 12, 768, 50257, 1024)
    assert gpt2.norm_first and gpt2.positional == "learned" and gpt2.tie_weights
    assert TransformerConfig.from_preset("demo", n_layers=5).n_layers == 5
    assert set(PRESETS) >= {"demo", "gpt2"}
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerConfig.from_preset("gpt5")


@pytest.mark.parametrize("field,value,error,message", [
    ("d_model", 9, ValueError, r"d_model \(9\) must be divisible by n_heads \(2\)"),
    ("dropout", 1.0, ValueError, r"dropout must be in \[0, 1\)"),
    ("dropout", -0.1, ValueError, "dropout"),
    ("positional", "rotary", ValueError, "positional must be one of"),
    ("activation", "relu", ValueError, "activation must be one of"),
    ("init", "kaiming", ValueError, "init must be one of"),
    ("dtype", "float16", ValueError, "dtype must be one of"),
    ("n_layers", 0, ValueError, "n_layers must be a positive integer"),
    ("vocab_size", 2.5, ValueError, "vocab_size must be a positive integer"),
    ("layer_norm_eps", 0.0, ValueError, "layer_norm_eps"),
    ("norm_first", "yes", TypeError, "norm_first must be True or False"),
    ("norm", "batchnorm", ValueError, "norm must be one of"),
    ("norm", None, ValueError, "norm must be one of"),
    ("activation", "geglu", ValueError, "activation must be one of"),
    ("bias", 0, TypeError, "bias must be True or False"),
])
def test_bad_configs(field, value, error, message):
    with pytest.raises(error, match=message):
        TransformerConfig(**{"vocab_size": 11, "d_model": 8, "n_heads": 2, field: value})


@pytest.mark.parametrize("ids,error,message", [
    (np.array([[1, 2, 11]]), ValueError, r"token id 11 at ids\[0, 2\] is out of range \[0, 11\)"),
    (np.array([[1, -1]]), ValueError, "token id -1"),
    (np.array([[1.0, 2.0]]), TypeError, "integer array of token ids, got dtype float64"),
    (np.array([1, 2, 3]), ValueError, r"shape \(batch, seq_len\), got shape \(3,\)"),
    (np.zeros((2, 0), dtype=np.int64), ValueError, "empty"),
    (np.zeros((1, 13), dtype=np.int64), ValueError, "sequence length 13 exceeds max_seq_len 12"),
    ([["a", "b"]], TypeError, "integer array"),
])
def test_bad_ids(ids, error, message):
    model = small_model(positional="learned")
    with pytest.raises(error, match=message):
        model(ids)
    with pytest.raises(error, match=message):
        model.loss(ids, np.zeros(np.shape(ids), dtype=np.int64))


def test_sinusoidal_model_accepts_sequences_beyond_max_seq_len():
    model = small_model(positional="sinusoidal")
    assert model(np.zeros((1, 20), dtype=np.int64)).shape == (1, 20, 11)


@pytest.mark.parametrize("targets,error,message", [
    (np.zeros((2, 4), dtype=np.int64), ValueError, r"targets shape \(2, 4\) must match ids shape \(2, 3\)"),
    (np.zeros((2, 3)), TypeError, "targets must be an integer array"),
    (np.full((2, 3), 11), ValueError, r"target 11 at targets\[0, 0\] is out of range"),
    (np.full((2, 3), IGNORE_INDEX), ValueError, "every target equals ignore_index"),
])
def test_bad_targets(targets, error, message):
    with pytest.raises(error, match=message):
        small_model().loss(np.zeros((2, 3), dtype=np.int64), targets)


def test_backward_needs_a_fresh_loss():
    model = small_model()
    ids, targets = random_batch(model, (1, 4))
    with pytest.raises(RuntimeError, match="needs a preceding loss"):
        model.backward()
    model.loss(ids, targets)
    model(ids)
    with pytest.raises(RuntimeError, match="needs a preceding loss"):
        model.backward()
    model.loss(ids, targets)
    model.backward()
    with pytest.raises(RuntimeError, match="needs a preceding loss"):
        model.backward()


def test_config_type_is_checked():
    with pytest.raises(TypeError, match="TransformerConfig"):
        TransformerLM({"vocab_size": 10})

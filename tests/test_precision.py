"""Mixed precision (precision.py): the switch, float32 master weights, the loss scaler, and the error bounds."""
import dataclasses

import numpy as np
import pytest
from conftest import require_oracle

import precision
import train
from checkpoint import load_state
from optim import AdamW
from precision import (
    ERROR_BOUNDS,
    ROUNDINGS,
    LossScaler,
    autocast,
    check_error,
    matmul,
    operand_rounding,
    round_to_bfloat16,
)
from tokenizer import CharTokenizer
from transformer_lm import TransformerConfig, TransformerLM

SMALL = TransformerConfig(vocab_size=32, d_model=32, n_heads=4, n_layers=2, max_seq_len=16, dropout=0.0,
                          positional="learned", norm_first=True, init="gpt2")
TEXT = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 20


def batch(seed=0, config=SMALL, shape=(8, 16)):
    ids = np.random.default_rng(seed).integers(0, config.vocab_size, shape)
    return ids, np.roll(ids, -1, axis=1)


def train_steps(model, steps, ids, targets, scaler=None):
    """The loss of each of `steps` AdamW steps on one batch, loss-scaled when a scaler is given."""
    optimizer, losses = AdamW(model.parameters(), lr=3e-3), []
    for _ in range(steps):
        losses.append(model.loss(ids, targets))
        grads = model.backward(loss_scale=scaler.scale if scaler else 1.0)
        finite = scaler.unscale(grads) if scaler else True
        if finite:
            optimizer.step(grads)
        if scaler:
            scaler.update(finite)
    return losses, optimizer


@pytest.mark.parametrize("fields, message", [(dict(precision="fp8"), "precision must be one of"),
                                             (dict(precision="bf16", dtype="float64"), "dtype must be 'float32'"),
                                             (dict(precision=16), "precision must be one of")])
def test_bad_precision_values_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **fields)
    with pytest.raises(ValueError, match="precision must be one of"):
        operand_rounding("half")
    with pytest.raises(SystemExit):
        train.parse_args(["--precision", "fp8"])


def test_bfloat16_rounding_equals_ml_dtypes_conversion():
    ml_dtypes = require_oracle("ml_dtypes")
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)  # every kind of float32 bit pattern
    special = np.array([0.0, -0.0, 1.0, np.inf, -np.inf, np.finfo(np.float32).max, -np.finfo(np.float32).max,
                        np.finfo(np.float32).tiny, 1e-45, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-9,
                        1.0 + 3 * 2.0**-9], np.float32)  # 1 + 2^-8 ties to even (down), 1 + 3 * 2^-8 (up)
    x = np.concatenate([bits.view(np.float32), special])
    ours = round_to_bfloat16(x)
    with np.errstate(invalid="ignore"):  # ml_dtypes warns about the NaNs it converts
        theirs = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(x))  # NaN stays NaN, whatever its bits
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(ours[finite].view(np.uint32), theirs[finite].view(np.uint32))  # -0.0 included


def test_bfloat16_rounding_by_hand():
    x = np.array([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-9, 3.0e38, 65504.0], np.float32)
    # ties go to the even neighbour (1 + 2^-8 -> 1, 1 + 3 * 2^-8 -> 1 + 2^-6), less than half a step rounds down,
    # more rounds up (3e38 to 226/128 * 2^127), and past the largest bfloat16 to inf
    expected = np.array([1.0, 1.0 + 2.0**-6, 1.0, 2.0**127 * 1.765625, 65536.0], np.float32)
    np.testing.assert_array_equal(round_to_bfloat16(x), expected)
    assert round_to_bfloat16(np.array([3.4e38], np.float32))[0] == np.inf


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_matmul_rounds_its_operands_and_sums_in_float32(name):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 5, 64), dtype=np.float32), rng.standard_normal((64, 7), dtype=np.float32)
    rounding = ROUNDINGS[name]
    exact = rounding(a).astype(np.float64) @ rounding(b).astype(np.float64)  # the rounded operands' products
    with autocast(rounding):
        product = matmul(a, b)
    assert product.dtype == np.float32
    np.testing.assert_allclose(product, exact, rtol=0, atol=64 * 2.0**-24 * np.abs(exact).max())
    assert np.abs(a @ b - exact).max() > 1e-2 * ERROR_BOUNDS[name]  # the rounding did happen
    np.testing.assert_array_equal(matmul(a, b), a @ b)  # outside autocast: the plain product


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_master_weights_and_adamw_moments_stay_float32(name):
    model = TransformerLM(dataclasses.replace(SMALL, precision=name), seed=1)
    _, optimizer = train_steps(model, 3, *batch(), scaler=LossScaler() if name == "fp16" else None)
    weight = model.parameters()["decoder.blocks.0.attention.W_qkv"]
    assert optimizer.step_count == 3
    for arrays in (model.parameters(), model.gradients(), optimizer.exp_avg, optimizer.exp_avg_sq):
        assert {value.dtype for value in arrays.values()} == {np.dtype(np.float32)}
    # Masters, not rounded copies: the updates left values between the low precision's neighbours.
    assert (weight != ROUNDINGS[name](weight)).mean() > 0.5


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_step_with_an_inf_or_nan_gradient_is_skipped_and_the_scale_halves(bad):
    model = TransformerLM(dataclasses.replace(SMALL, precision="fp16"), seed=1)
    scaler = LossScaler()
    _, optimizer = train_steps(model, 2, *batch(), scaler=scaler)
    params = {name: value.copy() for name, value in model.parameters().items()}
    moments = {name: value.copy() for name, value in optimizer.exp_avg_sq.items()}
    model.loss(*batch(1))
    grads = model.backward(loss_scale=scaler.scale)
    grads["decoder.blocks.1.feed_forward.W_out"][3, 4] = bad
    assert not scaler.unscale(grads)
    scaler.update(False)
    assert scaler.scale == precision.INITIAL_LOSS_SCALE / 2 and scaler.clean_steps == 0
    # What train.py does with finite=False: no optimizer step, so nothing moves.
    assert optimizer.step_count == 2
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(value, params[name])
        np.testing.assert_array_equal(optimizer.exp_avg_sq[name], moments[name])


def test_the_scale_doubles_after_growth_interval_clean_steps_in_a_row():
    scaler = LossScaler(scale=8.0, growth_interval=3)
    for finite, scale in [(True, 8), (True, 8), (False, 4), (True, 4), (True, 4), (True, 8), (True, 8)]:
        scaler.update(finite)
        assert scaler.scale == scale
    assert scaler.state_dict() == {"scale": 8.0, "clean_steps": 1}
    for bad in [dict(scale=3.0, clean_steps=0), dict(scale=8.0, clean_steps=3), dict(scale=8.0), [8.0, 0]]:
        with pytest.raises(ValueError, match="loss scale"):
            scaler.load_state_dict(bad)
    with pytest.raises(ValueError, match="power of two"):
        LossScaler(scale=1000.0)


@pytest.mark.parametrize("overrides", [dict(), dict(adaptive_span=True, max_span=12, span_ramp=4)])
def test_loss_scaled_gradients_unscaled_equal_unscaled_ones_exactly(overrides):
    # In float64 (and float32) arithmetic a power-of-two scale and its inverse are exact; with adaptive_span the
    # training penalty's gradient is scaled too.
    model = TransformerLM(dataclasses.replace(SMALL, dtype="float64", **overrides), seed=2)
    ids, targets = batch()
    model.loss(ids, targets)
    plain = {name: grad.copy() for name, grad in model.backward().items()}
    model.loss(ids, targets)
    scaled = model.backward(loss_scale=2.0**16)
    assert LossScaler().unscale(scaled)
    for name, grad in plain.items():
        np.testing.assert_array_equal(scaled[name], grad, err_msg=name)


def test_fp16_scaling_keeps_gradients_that_fp16_would_flush_to_zero():
    # A loss 2^-20 times smaller has gradients below fp16's smallest subnormal (6e-8): unscaled they vanish in
    # the rounded products, scaled by 2^16 they survive and unscale to the float32 ones.
    model = TransformerLM(dataclasses.replace(SMALL, precision="fp16"), seed=2)
    ids, targets = batch()
    reference = TransformerLM(SMALL, seed=2)
    reference.loss(ids, targets)
    expected = reference.backward(loss_scale=2.0**-20)["decoder.blocks.0.attention.W_qkv"]
    model.loss(ids, targets)
    flushed = model.backward(loss_scale=2.0**-20)["decoder.blocks.0.attention.W_qkv"].copy()
    model.loss(ids, targets)
    grads = model.backward(loss_scale=2.0**-20 * 2.0**16)
    LossScaler(scale=2.0**16).unscale(grads)
    assert np.abs(flushed - expected).max() > 0.5 * np.abs(expected).max()
    assert np.abs(grads["decoder.blocks.0.attention.W_qkv"] - expected).max() < 1e-2 * np.abs(expected).max()


@pytest.mark.parametrize("name", ["bf16", "fp16"])
@pytest.mark.parametrize("preset", ["nanogpt-cpu", "modern-cpu"])
def test_low_precision_logits_and_gradients_are_within_the_bound_of_float64(name, preset):
    config = TransformerConfig.from_preset(preset)
    ids, targets = batch(config=config, shape=(2, 32))
    reference = TransformerLM(dataclasses.replace(config, dtype="float64"), seed=3)
    model = TransformerLM(dataclasses.replace(config, precision=name), seed=3)
    logits = check_error(model(ids), reference(ids), name, "logits")
    assert logits > ERROR_BOUNDS[name] / 100  # the products were rounded (fp32 is ~1e-7 here)
    model.loss(ids, targets)
    reference.loss(ids, targets)
    expected = reference.backward()
    for parameter, grad in model.backward().items():
        check_error(grad, expected[parameter], name, parameter)
    with pytest.raises(AssertionError, match="logits: fp32 is"):  # the check can fail
        check_error(model(ids), reference(ids), "fp32", "logits")


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_low_precision_training_lowers_the_loss_like_fp32(name):
    ids, targets = batch()
    fp32_losses, _ = train_steps(TransformerLM(SMALL, seed=4), 25, ids, targets)
    model = TransformerLM(dataclasses.replace(SMALL, precision=name), seed=4)
    losses, _ = train_steps(model, 25, ids, targets, scaler=LossScaler() if name == "fp16" else None)
    assert losses[-1] < 0.6 * losses[0]
    assert abs(losses[-1] - fp32_losses[-1]) < 0.05 * fp32_losses[-1]


def test_kv_cache_generation_equals_full_recompute_in_bf16():
    prompt = np.arange(6)[None]
    model = TransformerLM(dataclasses.replace(SMALL, precision="bf16"), seed=5)
    cached = model.generate(prompt, 6, temperature=0)
    full = prompt
    for _ in range(6):  # full recompute, through model.forward, in bf16 too
        full = np.concatenate([full, model(full)[:, -1].argmax(axis=-1)[:, None]], axis=1)
    np.testing.assert_array_equal(cached, full)


def test_fp16_training_skips_overflowing_steps_and_a_resume_continues_the_scale(tmp_path, monkeypatch):
    # A first scale of 2^40 overflows fp16 in the backward pass; the run halves it until the steps go through, and
    # doubles it after every 2 clean steps.
    monkeypatch.setattr(precision, "INITIAL_LOSS_SCALE", 2.0**40)
    monkeypatch.setattr(precision, "LOSS_SCALE_GROWTH_INTERVAL", 2)
    tokenizer = CharTokenizer.from_text(TEXT)
    config = TransformerConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, n_layers=1, max_seq_len=16,
                               dropout=0.0, positional="learned", norm_first=True, precision="fp16")
    settings = dict(batch_size=4, eval_interval=100, eval_iters=1, warmup_iters=1, log_interval=100, grad_clip=0.0)
    model = TransformerLM(config)
    model.tokenizer = tokenizer
    start = {name: value.copy() for name, value in model.parameters().items()}
    tokens = np.array(tokenizer.encode(TEXT))
    history = train.train(model, tokens, out_dir=tmp_path, max_iters=40, **settings)
    rows = [row for row in history if row["kind"] == "train"]
    replay = LossScaler()  # the logged outcomes, replayed, give every logged scale: halved on a skip, doubled
    for row in rows:       # after 2 clean steps in a row
        assert row["loss_scale"] == replay.scale
        replay.update(not row["skipped"])
    assert [row["skipped"] for row in rows[:5]] == [True] * 5  # 2^40 .. 2^36 overflow fp16
    assert any(later["loss_scale"] > earlier["loss_scale"] for earlier, later in zip(rows, rows[1:]))
    assert not np.array_equal(model.parameters()["decoder.blocks.0.attention.W_qkv"],
                              start["decoder.blocks.0.attention.W_qkv"])
    saved = load_state(tmp_path / "checkpoint")["loss_scaler"]
    assert saved == replay.state_dict()

    resumed = TransformerLM(config)
    history = train.train(resumed, tokens, out_dir=tmp_path, resume=True, max_iters=42, **settings)
    assert next(row for row in history if row["kind"] == "train")["loss_scale"] == saved["scale"]

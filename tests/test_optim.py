"""Tests for optim.py: AdamW against torch.optim.AdamW, clipping, the schedule, state round trips."""
import math

import numpy as np
import pytest
from conftest import require_oracle

from optim import AdamW, accumulate_grads, clip_grad_norm, lr_schedule

# Shapes named like the model's parameters: 2-D matrices (decayed) and 1-D vectors (never decayed).
PARAM_SHAPES = {
    "token_embedding.weight": (11, 8),
    "blocks.0.attention.W_qkv": (8, 24),
    "blocks.0.attention.b_qkv": (24,),
    "blocks.0.norm1.weight": (8,),
    "blocks.0.norm1.bias": (8,),
    "final_norm.weight": (8,),
}
SCHEDULE = {"lr": 3e-2, "min_lr": 3e-3, "warmup_iters": 3, "decay_iters": 10}


def make_params(rng, dtype=np.float64):
    return {name: rng.standard_normal(shape).astype(dtype) for name, shape in PARAM_SHAPES.items()}


def make_grads(rng, dtype=np.float64, scale=1.0):
    return {name: (scale * rng.standard_normal(shape)).astype(dtype) for name, shape in PARAM_SHAPES.items()}


def relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def test_adamw_with_clipping_and_schedule_matches_torch():
    torch = require_oracle("torch")
    rng = np.random.default_rng(0)
    params = make_params(rng)
    torch_params = {name: torch.tensor(value.copy(), requires_grad=True) for name, value in params.items()}
    weight_decay, max_norm = 0.1, 1.0
    torch_optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in torch_params.values() if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in torch_params.values() if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=SCHEDULE["lr"], betas=(0.9, 0.95), eps=1e-8,
    )
    optimizer = AdamW(params, lr=SCHEDULE["lr"], betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)

    n_clipped = 0
    for iteration in range(14):  # runs past decay_iters, so all three phases of the schedule are used
        lr = lr_schedule(iteration, **SCHEDULE)
        # Alternate small and large gradients so that some steps are clipped and others are not.
        grads = make_grads(rng, scale=0.05 if iteration % 2 else 3.0)
        for name, tensor in torch_params.items():
            tensor.grad = torch.tensor(grads[name].copy())
        torch_norm = float(torch.nn.utils.clip_grad_norm_(list(torch_params.values()), max_norm))
        norm = clip_grad_norm(grads, max_norm)
        n_clipped += norm > max_norm
        assert norm == pytest.approx(torch_norm, rel=1e-12)
        for group in torch_optimizer.param_groups:
            group["lr"] = lr
        torch_optimizer.step()
        optimizer.step(grads, lr=lr)

    assert 0 < n_clipped < 14
    for name, tensor in torch_params.items():
        assert relative_error(params[name], tensor.detach().numpy()) <= 1e-10, name
        torch_state = torch_optimizer.state[tensor]
        assert relative_error(optimizer.exp_avg[name], torch_state["exp_avg"].numpy()) <= 1e-10, name
        assert relative_error(optimizer.exp_avg_sq[name], torch_state["exp_avg_sq"].numpy()) <= 1e-10, name


def test_first_step_by_hand():
    # At step 1 the bias-corrected moments are m_hat = g and v_hat = g^2, so the Adam step is
    # lr * g / (|g| + eps), preceded by decay of the 2-D weights only.
    rng = np.random.default_rng(1)
    params = make_params(rng)
    initial = {name: value.copy() for name, value in params.items()}
    grads = make_grads(rng)
    lr, weight_decay, eps = 0.01, 0.1, 1e-8
    AdamW(params, lr=lr, eps=eps, weight_decay=weight_decay).step(grads)
    for name, value in params.items():
        decay = 1 - lr * weight_decay if value.ndim >= 2 else 1.0
        expected = initial[name] * decay - lr * grads[name] / (np.abs(grads[name]) + eps)
        np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-15, err_msg=name)


def test_weight_decay_applies_to_matrices_only():
    # With zero gradients the Adam part of the update is exactly zero, so only decoupled decay moves a tensor.
    rng = np.random.default_rng(2)
    params = make_params(rng)
    initial = {name: value.copy() for name, value in params.items()}
    zero_grads = {name: np.zeros_like(value) for name, value in params.items()}
    AdamW(params, lr=0.5, weight_decay=0.2).step(zero_grads)
    for name in ("token_embedding.weight", "blocks.0.attention.W_qkv"):
        np.testing.assert_array_equal(params[name], initial[name] * 0.9)  # 1 - lr * weight_decay
    for name in ("blocks.0.attention.b_qkv", "blocks.0.norm1.weight", "blocks.0.norm1.bias",
                 "final_norm.weight"):
        np.testing.assert_array_equal(params[name], initial[name])


def test_step_updates_the_models_arrays_in_place():
    rng = np.random.default_rng(3)
    params = make_params(rng)
    live_arrays = dict(params)
    before = {name: value.copy() for name, value in params.items()}
    AdamW(params).step(make_grads(rng))
    for name, value in live_arrays.items():
        assert params[name] is value
        assert not np.array_equal(value, before[name])


def test_float32_stays_float32():
    rng = np.random.default_rng(4)
    params = make_params(rng, dtype=np.float32)
    optimizer = AdamW(params, lr=1e-2, weight_decay=0.1)
    for iteration in range(3):
        grads = make_grads(rng, dtype=np.float32, scale=10.0)
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads, lr=lr_schedule(iteration, **SCHEDULE))
        assert all(grad.dtype == np.float32 for grad in grads.values())
    for name, value in params.items():
        assert value.dtype == np.float32, name
        assert optimizer.exp_avg[name].dtype == np.float32, name
        assert optimizer.exp_avg_sq[name].dtype == np.float32, name
        assert optimizer.state_dict()[f"exp_avg.{name}"].dtype == np.float32, name


def test_state_dict_round_trip_through_npz_continues_identically(tmp_path):
    rng = np.random.default_rng(5)
    params = make_params(rng)
    optimizer = AdamW(params, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        optimizer.step(make_grads(rng))

    path = tmp_path / "optimizer.npz"
    np.savez(path, **optimizer.state_dict())
    resumed_params = {name: value.copy() for name, value in params.items()}
    resumed = AdamW(resumed_params, lr=1e-2, weight_decay=0.1)
    with np.load(path, allow_pickle=False) as stored:
        resumed.load_state_dict(dict(stored))
    assert resumed.step_count == 3

    # The bias corrections depend on the step count, so a lost step would show up here.
    for _ in range(3):
        grads = make_grads(rng)
        optimizer.step(grads)
        resumed.step({name: grad.copy() for name, grad in grads.items()})
    for name in params:
        np.testing.assert_array_equal(resumed_params[name], params[name])


def test_state_dict_is_a_copy():
    rng = np.random.default_rng(6)
    optimizer = AdamW(make_params(rng))
    optimizer.step(make_grads(rng))
    state = optimizer.state_dict()
    state["exp_avg.final_norm.weight"] += 1.0
    assert not np.array_equal(optimizer.exp_avg["final_norm.weight"], state["exp_avg.final_norm.weight"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda state: state.pop("exp_avg_sq.blocks.0.norm1.bias"), "exp_avg_sq.blocks.0.norm1.bias"),
        (lambda state: state.update({"exp_avg.unknown": np.zeros(3)}), "exp_avg.unknown"),
        (lambda state: state.update({"exp_avg.blocks.0.attention.W_qkv": np.zeros((24, 8))}),
         "exp_avg.blocks.0.attention.W_qkv"),
        (lambda state: state.update({"step": -1}), "step"),
        (lambda state: state.update({"step": 2.5}), "step"),
    ],
)
def test_load_state_dict_rejects_mismatches(change, message):
    rng = np.random.default_rng(7)
    optimizer = AdamW(make_params(rng))
    optimizer.step(make_grads(rng))
    state = optimizer.state_dict()
    change(state)
    fresh = AdamW(make_params(rng))
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        fresh.load_state_dict(state)
    assert fresh.step_count == 0  # a rejected state changes nothing


@pytest.mark.parametrize(
    "hyperparameters",
    [
        {"lr": -1e-3},
        {"betas": (1.0, 0.999)},
        {"betas": (0.9, 1.0)},
        {"betas": (-0.1, 0.999)},
        {"eps": 0.0},
        {"eps": -1e-8},
        {"weight_decay": -0.01},
        {"lr": float("nan")},
    ],
)
def test_bad_hyperparameters_raise(hyperparameters):
    with pytest.raises(ValueError):
        AdamW(make_params(np.random.default_rng(8)), **hyperparameters)


def test_integer_parameters_are_rejected():
    with pytest.raises(ValueError, match="tokens"):
        AdamW({"tokens": np.zeros((2, 2), dtype=np.int64)})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda grads: grads.pop("final_norm.weight"), "final_norm.weight"),
        (lambda grads: grads.update({"extra.bias": np.zeros(2)}), "extra.bias"),
        (lambda grads: grads.update({"blocks.0.norm1.bias": np.zeros(9)}), "blocks.0.norm1.bias"),
    ],
)
def test_step_rejects_mismatched_grads(change, message):
    rng = np.random.default_rng(9)
    params = make_params(rng)
    before = {name: value.copy() for name, value in params.items()}
    grads = make_grads(rng)
    change(grads)
    optimizer = AdamW(params)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        optimizer.step(grads)
    assert optimizer.step_count == 0
    for name in params:
        np.testing.assert_array_equal(params[name], before[name])


def test_step_rejects_negative_learning_rate():
    rng = np.random.default_rng(10)
    with pytest.raises(ValueError, match="learning rate"):
        AdamW(make_params(rng)).step(make_grads(rng), lr=-0.1)


def test_clip_grad_norm_by_hand():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0], [12.0]])}  # global norm sqrt(9 + 16 + 144) = 13
    norm = clip_grad_norm(grads, max_norm=1.0)
    assert norm == pytest.approx(13.0, rel=1e-15)
    scale = 1.0 / (13.0 + 1e-6)
    np.testing.assert_allclose(grads["a"], [3.0 * scale, 0.0], rtol=1e-15)
    np.testing.assert_allclose(grads["b"], [[4.0 * scale], [12.0 * scale]], rtol=1e-15)


def test_clip_grad_norm_leaves_small_gradients_alone():
    grads = {"a": np.array([3.0, 4.0], dtype=np.float32)}
    assert clip_grad_norm(grads, max_norm=5.5) == pytest.approx(5.0)
    np.testing.assert_array_equal(grads["a"], [3.0, 4.0])
    assert grads["a"].dtype == np.float32


def test_clip_grad_norm_keeps_float32():
    grads = {"a": np.full((4, 4), 10.0, dtype=np.float32), "b": np.ones(3, dtype=np.float32)}
    clip_grad_norm(grads, max_norm=1.0)
    assert grads["a"].dtype == np.float32 and grads["b"].dtype == np.float32
    total = math.sqrt(float(np.sum(grads["a"] ** 2) + np.sum(grads["b"] ** 2)))
    assert total == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_leaves_non_finite_gradients_unchanged():
    grads = {"a": np.array([np.inf, 1.0]), "b": np.array([2.0])}
    assert clip_grad_norm(grads, max_norm=1.0) == math.inf
    np.testing.assert_array_equal(grads["b"], [2.0])


@pytest.mark.parametrize("max_norm", [0.0, -1.0])
def test_clip_grad_norm_rejects_non_positive_max_norm(max_norm):
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm({"a": np.ones(2)}, max_norm)


def test_accumulate_grads_sums_scaled_micro_batches_without_aliasing():
    first = {"w": np.array([1.0, 2.0]), "b": np.array([4.0])}
    second = {"w": np.array([3.0, 6.0]), "b": np.array([0.0])}
    total = accumulate_grads(None, first, scale=0.5)
    first["w"][:] = 100.0  # a model reusing its gradient buffers must not corrupt the running sum
    total = accumulate_grads(total, second, scale=0.5)
    np.testing.assert_array_equal(total["w"], [2.0, 4.0])
    np.testing.assert_array_equal(total["b"], [2.0])


def test_accumulate_grads_rejects_mismatched_names():
    with pytest.raises(ValueError, match="missing"):
        accumulate_grads({"w": np.zeros(2), "b": np.zeros(1)}, {"w": np.ones(2)})


def test_cosine_schedule_at_key_iterations():
    def schedule(iteration):
        return lr_schedule(iteration, lr=6e-4, min_lr=6e-5, warmup_iters=10, decay_iters=110)

    assert schedule(0) == pytest.approx(6e-4 * 1 / 11, rel=1e-12)
    assert schedule(9) == pytest.approx(6e-4 * 10 / 11, rel=1e-12)
    assert schedule(10) == pytest.approx(6e-4, rel=1e-12)  # cosine starts at its top: cos(0) = 1
    assert schedule(60) == pytest.approx((6e-4 + 6e-5) / 2, rel=1e-12)  # halfway: cos(pi / 2) = 0
    assert schedule(35) == pytest.approx(6e-5 + 0.5 * (1 + math.sqrt(0.5)) * (6e-4 - 6e-5), rel=1e-12)
    assert schedule(110) == pytest.approx(6e-5, rel=1e-12)
    assert schedule(111) == 6e-5
    assert schedule(10**6) == 6e-5


def test_schedule_without_warmup_starts_at_lr():
    assert lr_schedule(0, lr=1e-3, min_lr=0.0, warmup_iters=0, decay_iters=4) == pytest.approx(1e-3)
    assert lr_schedule(4, lr=1e-3, min_lr=0.0, warmup_iters=0, decay_iters=4) == pytest.approx(0.0, abs=1e-18)


def test_constant_schedule():
    for iteration in (0, 5, 10**6):
        lr = lr_schedule(iteration, lr=1e-3, min_lr=0.0, warmup_iters=0, decay_iters=0, kind="constant")
        assert lr == 1e-3


@pytest.mark.parametrize(
    "iteration, arguments",
    [
        (-1, {}),
        (1.5, {}),
        (0, {"lr": -1.0}),
        (0, {"min_lr": -1e-5}),
        (0, {"min_lr": 1.0}),  # above lr
        (0, {"warmup_iters": -1}),
        (0, {"decay_iters": 3}),  # not after the warm-up
        (0, {"kind": "linear"}),
    ],
)
def test_schedule_rejects_bad_arguments(iteration, arguments):
    with pytest.raises(ValueError):
        lr_schedule(iteration, **{**SCHEDULE, **arguments})

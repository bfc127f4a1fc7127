"""Optimisation: AdamW, global-norm gradient clipping and the learning-rate schedule.

Everything works on plain dicts of NumPy arrays: ``params`` maps a parameter name to the model's live array,
``grads`` maps the same names to gradients of the same shapes. The optimizer updates ``params`` in place, so
the model sees the new values without any copying back.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from device import array_module, is_array


def _check_grads_match(params, grads):
    """Raise ValueError unless ``grads`` has exactly the names and shapes of ``params``."""
    missing = sorted(set(params) - set(grads))
    unexpected = sorted(set(grads) - set(params))
    if missing or unexpected:
        raise ValueError(f"gradients do not match the parameters: missing {missing}, unexpected {unexpected}")
    for name, param in params.items():
        if grads[name].shape != param.shape:
            raise ValueError(f"gradient for '{name}' has shape {grads[name].shape}, expected {param.shape}")


def _check_finite(value, name):
    """``value`` as a Python float, or ValueError unless it is a finite real number. (An infinite value
    would pass the range checks below and a NaN would fail them with a confusing message.)"""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_count(value, name):
    """ValueError unless ``value`` is an integer >= 0 (bools are not integers here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def _check_learning_rate(lr, name="learning rate"):
    if not _check_finite(lr, name) >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {lr}")


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), matching ``torch.optim.AdamW``.

    For each parameter p with gradient g, at step t (counting from 1):
        p <- p - lr * weight_decay * p                     (decoupled decay, 2-D weights only)
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    Weight decay is applied to every parameter with ``ndim >= 2``: the weight matrices, embeddings included
    (as nanoGPT does). Tensors with ``ndim < 2`` (biases, LayerNorm gains and biases) are never decayed:
    shrinking a LayerNorm gain or a bias towards zero does not regularise the function, it only distorts it.

    The moments m and v are kept in each parameter's own dtype, so a float32 model stays float32.
    """

    def __init__(self, params: dict[str, np.ndarray], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01) -> None:
        _check_learning_rate(lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        beta1, beta2 = betas
        for index, beta in enumerate((beta1, beta2)):
            if not 0.0 <= _check_finite(beta, f"betas[{index}]") < 1.0:
                raise ValueError(f"betas[{index}] must be in [0, 1), got {beta}")
        if not _check_finite(eps, "eps") > 0.0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if not _check_finite(weight_decay, "weight_decay") >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict of name -> numpy array, got {type(params).__name__}")
        for name, param in params.items():
            if not (is_array(param) and np.issubdtype(param.dtype, np.floating)):  # NumPy's or a GPU's
                raise ValueError(f"parameter '{name}' must be a floating-point numpy array")

        self.params = params
        # Python floats, never NumPy float64 scalars, so float32 arithmetic stays float32.
        self.lr = float(lr)
        self.beta1 = float(beta1)
        self.beta2 = float(beta2)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.step_count = 0
        self.exp_avg = {name: np.zeros_like(param) for name, param in params.items()}
        self.exp_avg_sq = {name: np.zeros_like(param) for name, param in params.items()}

    def decays(self, name: str) -> bool:
        """Whether weight decay applies to parameter ``name`` (only tensors with ndim >= 2)."""
        return self.params[name].ndim >= 2

    def step(self, grads: dict[str, np.ndarray], lr: float | None = None) -> None:
        """Apply one AdamW update to every parameter, in place.

        grads: dict name -> gradient with the parameter's shape.
        lr: learning rate for this step only (e.g. from ``lr_schedule``); ``None`` uses ``self.lr``.
        """
        _check_grads_match(self.params, grads)
        if lr is None:
            lr = self.lr
        _check_learning_rate(lr)
        lr = float(lr)

        self.step_count += 1
        bias_correction1 = 1.0 - self.beta1**self.step_count
        bias_correction2 = 1.0 - self.beta2**self.step_count
        step_size = lr / bias_correction1
        sqrt_bias_correction2 = math.sqrt(bias_correction2)

        for name, param in self.params.items():
            grad = grads[name]
            exp_avg = self.exp_avg[name]
            exp_avg_sq = self.exp_avg_sq[name]
            if self.decays(name):
                param *= 1.0 - lr * self.weight_decay
            # The same formulas as in the class docstring, written with one scratch array per parameter
            # instead of a fresh temporary for every operation.
            scratch = grad * (1.0 - self.beta1)
            exp_avg *= self.beta1
            exp_avg += scratch
            np.multiply(grad, grad, out=scratch)
            scratch *= 1.0 - self.beta2
            exp_avg_sq *= self.beta2
            exp_avg_sq += scratch
            np.sqrt(exp_avg_sq, out=scratch)
            scratch *= 1.0 / sqrt_bias_correction2
            scratch += self.eps                                   # the denominator
            np.divide(exp_avg, scratch, out=scratch)
            scratch *= step_size
            param -= scratch

    def state_dict(self) -> dict:
        """The optimizer's state as a flat dict of arrays and numbers, storable with ``np.savez``.

        Keys: ``step`` (int), ``exp_avg.<name>`` and ``exp_avg_sq.<name>`` (copies of the moments).
        Hyperparameters are not included: they come from the constructor.
        """
        state = {"step": self.step_count}
        for name in self.params:
            state[f"exp_avg.{name}"] = self.exp_avg[name].copy()
            state[f"exp_avg_sq.{name}"] = self.exp_avg_sq[name].copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a state produced by ``state_dict`` (or read back from an .npz file).

        Every key must be present with the parameter's shape and no extra keys are allowed; a mismatch raises
        ValueError naming the offending entry. Values are copied into the parameter's dtype.
        """
        expected_keys = {"step"}
        for name in self.params:
            expected_keys.update((f"exp_avg.{name}", f"exp_avg_sq.{name}"))
        missing = sorted(expected_keys - set(state))
        unexpected = sorted(set(state) - expected_keys)
        if missing:
            raise ValueError(f"optimizer state is missing {missing}")
        if unexpected:
            raise ValueError(f"optimizer state has unexpected entries {unexpected}")

        # An .npz file gives the step back as a 0-d array, a fresh state_dict as an int.
        step = np.asarray(state["step"])
        if step.ndim != 0 or not np.issubdtype(step.dtype, np.integer) or step < 0:
            raise ValueError(f"optimizer state 'step' must be a non-negative integer, got {state['step']!r}")
        for name, param in self.params.items():
            for key in (f"exp_avg.{name}", f"exp_avg_sq.{name}"):
                value = np.asarray(state[key])
                if value.shape != param.shape:
                    raise ValueError(
                        f"optimizer state '{key}' has shape {value.shape}, expected {param.shape}"
                    )

        # Copy only after everything validated, so a bad state leaves the optimizer untouched.
        self.step_count = int(step)
        for name in self.params:
            for moments, key in ((self.exp_avg, f"exp_avg.{name}"), (self.exp_avg_sq, f"exp_avg_sq.{name}")):
                np.copyto(moments[name], array_module(moments[name]).asarray(state[key]))  # onto a GPU's moments


def clip_grad_norm(grads: dict[str, np.ndarray], max_norm: float, total_norm: float | None = None) -> float:
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``.

    The global norm is sqrt(sum over all tensors of sum(g^2)), as if every gradient were one long vector.
    When it exceeds ``max_norm`` each gradient is multiplied by max_norm / (norm + 1e-6), exactly like
    ``torch.nn.utils.clip_grad_norm_`` (the 1e-6 guards against dividing by a zero norm).

    Returns the norm before clipping, as a Python float. If that norm is inf or nan the gradients are left
    unchanged, so the caller can notice and skip the step. total_norm: the global norm when the caller computed
    it (each rank of a sharded run holds only a part of the gradient, parallel.py); None computes it from grads.
    """
    if not _check_finite(max_norm, "max_norm") > 0.0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    if total_norm is None:  # per-tensor norms first, then the norm of those norms: the same order torch uses
        total_norm = math.sqrt(sum(float(np.linalg.norm(grad.ravel())) ** 2 for grad in grads.values()))
    if not math.isfinite(total_norm):
        return total_norm
    clip_coefficient = float(max_norm) / (total_norm + 1e-6)
    if clip_coefficient < 1.0:
        for grad in grads.values():
            grad *= clip_coefficient
    return total_norm


def accumulate_grads(total: dict[str, np.ndarray] | None, grads: dict[str, np.ndarray],
                     scale: float = 1.0) -> dict[str, np.ndarray]:
    """Add ``scale * grads`` into ``total`` and return it, for gradient accumulation over micro-batches.

    total: dict name -> array, or None to start a new sum (the gradients are copied, never aliased, since a
    model may reuse its gradient buffers on the next backward). With ``scale = 1 / n_micro_batches`` the sum
    is the gradient of the mean loss over the full batch.
    """
    scale = float(scale)
    if total is None:
        return {name: grad * scale for name, grad in grads.items()}
    _check_grads_match(total, grads)
    for name, grad in grads.items():
        total[name] += grad * scale
    return total


def lr_schedule(iteration: int, *, lr: float, min_lr: float, warmup_iters: int, decay_iters: int,
                kind: str = "cosine") -> float:
    """Learning rate for ``iteration`` (0-based), following nanoGPT's ``get_lr``.

    kind="cosine":
        it < warmup_iters:                  lr * (it + 1) / (warmup_iters + 1)     (linear warm-up)
        warmup_iters <= it <= decay_iters:  min_lr + 0.5 * (1 + cos(pi * r)) * (lr - min_lr),
                                            r = (it - warmup_iters) / (decay_iters - warmup_iters)
        it > decay_iters:                   min_lr
    kind="constant": always lr.
    """
    if kind not in ("cosine", "constant"):
        raise ValueError(f"kind must be 'cosine' or 'constant', got {kind!r}")
    _check_count(iteration, "iteration")
    _check_learning_rate(lr, "lr")
    if kind == "constant":
        return float(lr)

    if not 0.0 <= _check_finite(min_lr, "min_lr") <= lr:
        raise ValueError(f"min_lr must be in [0, lr={lr}], got {min_lr}")
    _check_count(warmup_iters, "warmup_iters")
    _check_count(decay_iters, "decay_iters")
    if not decay_iters > warmup_iters:
        raise ValueError(f"decay_iters must be an integer > warmup_iters={warmup_iters}, got {decay_iters!r}")

    iteration, warmup_iters, decay_iters = int(iteration), int(warmup_iters), int(decay_iters)
    if iteration < warmup_iters:
        return float(lr) * (iteration + 1) / (warmup_iters + 1)
    if iteration > decay_iters:
        return float(min_lr)
    decay_ratio = (iteration - warmup_iters) / (decay_iters - warmup_iters)
    cosine_coefficient = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # goes from 1 down to 0
    return float(min_lr) + cosine_coefficient * (float(lr) - float(min_lr))

"""The small machinery every layer shares: a Module base class, the linear map, dropout, embeddings.

Each layer follows one pattern (the CS231n / llm.c one): `forward` stores on `self` what `backward`
needs, and `backward(dout)` returns the gradient with respect to the layer's input while adding
(`+=`) the gradients of its parameters into `self.grads`. Adding instead of assigning means a
tensor used twice, such as the token embedding that is also the output projection, needs no
special case: both uses simply add their share.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from device import array_module, to_device
from precision import matmul, round_operand


class Module:
    """Holds `params` and `grads` (dicts with the same keys) and finds sub-modules by attribute.

    Sub-modules are any attributes that are Modules, or lists of Modules; their parameters get
    dotted names such as `blocks.0.attention.W_qkv`.
    """

    def __init__(self) -> None:
        self.params = {}
        self.grads = {}
        self.training = True

    def add_parameter(self, name: str, value: np.ndarray) -> None:
        """Register `value` as parameter `name`, with a zero gradient of the same shape and dtype."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def children(self) -> Iterator[tuple[str, Module]]:
        """(attribute name, sub-module) for the direct sub-modules; list items are named `list.index`."""
        for attribute, value in vars(self).items():
            if isinstance(value, Module):
                yield attribute, value
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{attribute}.{index}", item

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """(dotted prefix, module) for this module and every module below it, depth first."""
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}{name}.")

    def parameters(self) -> dict[str, np.ndarray]:
        """dict full name -> the live parameter array (editing it in place edits the model)."""
        return {prefix + name: value for prefix, module in self.named_modules()
                for name, value in module.params.items()}

    def gradients(self) -> dict[str, np.ndarray]:
        """dict full name -> the accumulated gradient array (same keys as `parameters()`)."""
        return {prefix + name: value for prefix, module in self.named_modules()
                for name, value in module.grads.items()}

    def zero_grad(self) -> None:
        """Set every gradient of this module and its sub-modules to 0, in place."""
        for _, module in self.named_modules():
            for grad in module.grads.values():
                grad.fill(0)

    def to(self, device: str) -> Module:
        """Move every parameter and gradient of the tree to `device` ("cpu" or "cuda"; see device.py), replacing
        the arrays in the dicts: take parameters() (and build an optimizer) after moving. Returns self."""
        for arrays in (self.params, self.grads):
            for name, value in arrays.items():
                arrays[name] = to_device(value, device)
        for _, child in self.children():
            child.to(device)
        return self

    def train(self, mode: bool = True) -> Module:
        """Training mode (mode=True: dropout on, penalties added) or evaluation mode, for the whole tree."""
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self) -> Module:
        """Evaluation mode (dropout off, no training penalties): train(False)."""
        return self.train(False)

    # Hooks over the tree of modules. Each default just asks the sub-modules, so calling one on the model
    # collects it over every layer; a layer with something of its own overrides it (adding super()'s result
    # when it has sub-modules). TransformerLM.loss adds penalty() in training mode and its backward() calls
    # penalty_backward(); a trainer calls model.after_step() after every optimizer step.

    def penalty(self) -> float:
        """The terms this module adds to the training loss (regularizers such as the adaptive span's L1
        penalty): 0.0 unless a layer below defines one."""
        return sum((child.penalty() for _, child in self.children()), 0.0)

    def penalty_backward(self, scale: float = 1.0) -> None:
        """Add the gradient of scale * penalty() to the grads of the parameters it depends on (scale: the loss
        scale of fp16 training)."""
        for _, child in self.children():
            child.penalty_backward(scale)

    def after_step(self) -> None:
        """Called after each optimizer step, for constraints a gradient step may break (the adaptive span
        clamps its spans back into [0, max_span])."""
        for _, child in self.children():
            child.after_step()


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """y = x @ W + b.  x: (..., in), W: (in, out), b: (out,) or None (no bias) -> (..., out).

    Weights are stored (in, out), the layout of GPT-2's Conv1D, so checkpoints map without
    transposes. Flattening the leading axes gives BLAS one large matrix product instead of a
    stack of small ones.
    """
    out = matmul(x.reshape(-1, x.shape[-1]), weight)
    if bias is not None:
        out += bias
    return out.reshape(*x.shape[:-1], weight.shape[1])


def linear_backward(dout: np.ndarray, x: np.ndarray, weight: np.ndarray, grad_weight: np.ndarray,
                    grad_bias: np.ndarray | None) -> np.ndarray:
    """Adds dL/dW = x^T dout and dL/db = sum(dout) (grad_bias None: no bias) into the grads; returns
    dL/dx = dout W^T."""
    x_2d = x.reshape(-1, x.shape[-1])
    dout_2d = dout.reshape(-1, dout.shape[-1])
    dout_operand = round_operand(dout_2d)  # an operand of both products below: rounded once (bf16, fp16)
    grad_weight += round_operand(x_2d).T @ dout_operand
    if grad_bias is not None:
        grad_bias += dout_2d.sum(axis=0)
    return (dout_operand @ round_operand(weight).T).reshape(x.shape)


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1 / (1 - p), so the expected activation is unchanged and evaluation needs no rescaling.

    The random numbers come from the Generator handed in (the model's), so a seed fixes the masks.
    """

    def __init__(self, p: float, rng: np.random.Generator) -> None:
        super().__init__()
        self.p = p
        self.rng = rng
        self.scaled_mask = None

    @property
    def draws(self) -> bool:
        """Whether forward draws a mask: in training, with p > 0."""
        return self.training and self.p > 0.0

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (any shape) -> x with dropout applied (x itself in evaluation mode or with p = 0)."""
        if not self.draws:
            self.scaled_mask = None
            return x
        keep = self.rng.random(x.shape, dtype=x.dtype) >= self.p
        self.scaled_mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self.scaled_mask

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout -> dx through the same mask as the last forward."""
        return dout if self.scaled_mask is None else dout * self.scaled_mask


class Embedding(Module):
    """A lookup table: ids (...) -> rows of `weight` (..., d_model).  weight: (num_rows, d_model)."""

    def __init__(self, num_rows: int, d_model: int, dtype: npt.DTypeLike) -> None:
        super().__init__()
        self.add_parameter("weight", np.zeros((num_rows, d_model), dtype=dtype))
        self.ids = None

    def forward(self, ids: np.ndarray) -> np.ndarray:
        """ids (...) integers -> rows (..., d_model)."""
        self.ids = ids
        return self.params["weight"][ids]

    def backward(self, dout: np.ndarray) -> None:
        """dout (..., d_model): adds each position's gradient to its row of the weight's gradient."""
        # A row used by several positions receives the sum of their gradients; add.at adds repeated
        # indices correctly where `grad[ids] += dout` would keep only one of them. np.add.at does not reach
        # CuPy arrays: the array module's own add.at does.
        array_module(dout).add.at(self.grads["weight"], self.ids, dout)

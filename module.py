"""The small machinery every layer shares: a Module base class, the linear map, dropout, embeddings.

Each layer follows one pattern (the CS231n / llm.c one): `forward` stores on `self` what `backward`
needs, and `backward(dout)` returns the gradient with respect to the layer's input while adding
(`+=`) the gradients of its parameters into `self.grads`. Adding instead of assigning means a
tensor used twice, such as the token embedding that is also the output projection, needs no
special case: both uses simply add their share.
"""
import numpy as np


class Module:
    """Holds `params` and `grads` (dicts with the same keys) and finds sub-modules by attribute.

    Sub-modules are any attributes that are Modules, or lists of Modules; their parameters get
    dotted names such as `blocks.0.attention.W_qkv`.
    """

    def __init__(self):
        self.params = {}
        self.grads = {}
        self.training = True

    def add_parameter(self, name, value):
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def children(self):
        for attribute, value in vars(self).items():
            if isinstance(value, Module):
                yield attribute, value
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, Module):
                        yield f"{attribute}.{index}", item

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.children():
            yield from child.named_modules(f"{prefix}{name}.")

    def parameters(self):
        """dict full name -> the live parameter array (editing it in place edits the model)."""
        return {prefix + name: value for prefix, module in self.named_modules()
                for name, value in module.params.items()}

    def gradients(self):
        """dict full name -> the accumulated gradient array (same keys as `parameters()`)."""
        return {prefix + name: value for prefix, module in self.named_modules()
                for name, value in module.grads.items()}

    def zero_grad(self):
        for _, module in self.named_modules():
            for grad in module.grads.values():
                grad.fill(0)

    def train(self, mode=True):
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)


def linear_forward(x, weight, bias):
    """y = x @ W + b.  x: (..., in), W: (in, out), b: (out,) -> (..., out).

    Weights are stored (in, out), the layout of GPT-2's Conv1D, so checkpoints map without
    transposes. Flattening the leading axes gives BLAS one large matrix product instead of a
    stack of small ones.
    """
    out = x.reshape(-1, x.shape[-1]) @ weight
    out += bias
    return out.reshape(*x.shape[:-1], weight.shape[1])


def linear_backward(dout, x, weight, grad_weight, grad_bias):
    """Adds dL/dW = x^T dout and dL/db = sum(dout) into the grads; returns dL/dx = dout W^T."""
    x_2d = x.reshape(-1, x.shape[-1])
    dout_2d = dout.reshape(-1, dout.shape[-1])
    grad_weight += x_2d.T @ dout_2d
    grad_bias += dout_2d.sum(axis=0)
    return (dout_2d @ weight.T).reshape(x.shape)


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1 / (1 - p), so the expected activation is unchanged and evaluation needs no rescaling.

    The random numbers come from the Generator handed in (the model's), so a seed fixes the masks.
    """

    def __init__(self, p, rng):
        super().__init__()
        self.p = p
        self.rng = rng
        self.scaled_mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self.scaled_mask = None
            return x
        keep = self.rng.random(x.shape, dtype=x.dtype) >= self.p
        self.scaled_mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self.scaled_mask

    def backward(self, dout):
        return dout if self.scaled_mask is None else dout * self.scaled_mask


class Embedding(Module):
    """A lookup table: ids (...) -> rows of `weight` (..., d_model).  weight: (num_rows, d_model)."""

    def __init__(self, num_rows, d_model, dtype):
        super().__init__()
        self.add_parameter("weight", np.zeros((num_rows, d_model), dtype=dtype))
        self.ids = None

    def forward(self, ids):
        self.ids = ids
        return self.params["weight"][ids]

    def backward(self, dout):
        # A row used by several positions receives the sum of their gradients; np.add.at adds
        # repeated indices correctly where `grad[ids] += dout` would keep only one of them.
        np.add.at(self.grads["weight"], self.ids, dout)

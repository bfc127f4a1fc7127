"""Mixed precision: matrix products in bfloat16 or float16, everything else in float32, and fp16's loss scaling.

TransformerConfig.precision is the one switch: "fp32" (the default), "bf16" or "fp16". With a low precision
the model keeps its float32 parameters, which are the MASTER weights (AdamW updates them and keeps its moments in
float32, checkpoints store them), and every matrix product rounds both operands to the low precision and sums their
products in float32 (`matmul` below); activations, softmax and LayerNorm/RMSNorm statistics, the loss and the
gradients stay float32. This is what a GPU's tensor cores do with bf16/fp16 inputs (exact products, float32
accumulation), so the CPU run shows the numerics a GPU run gets. It differs from PyTorch's autocast in one way:
a product's result stays float32 instead of being rounded to the low precision.

fp16 keeps 5 exponent bits: gradients below 6e-8 flush to zero when rounded and values above 65504 become inf.
LossScaler multiplies the loss gradient by a large power of two before the backward pass (so small gradients
survive the rounding), divides it out of the gradients, and skips the step when that produced inf or NaN
(Micikevicius et al. 2018). bf16 has float32's exponent range and needs no scaling.

NumPy has no bfloat16 type (nor can CuPy's be counted on), and none is needed here: a bfloat16 number is the upper
16 bits of a float32, so `round_to_bfloat16` rounds float32 values to it with integer operations on their bits, in
any array module. NumPy has no low-precision BLAS either, so a low-precision product is a rounding of the operands
followed by a float32 product: on the CPU slower than fp32 (the roundings are extra passes over the data) and no
smaller (the activations stay float32). On the CPU, bf16/fp16 is for checking the numerics of a GPU run, not for
speed or memory.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np

from device import array_module
from transformer_config import CHOICES

PRECISIONS = CHOICES["precision"]

# fp16's dynamic loss scaling (the values of torch.cuda.amp.GradScaler): start at 2^16, halve the scale and skip
# the step when the gradients overflow, double it after this many clean steps in a row.
INITIAL_LOSS_SCALE = 2.0**16
LOSS_SCALE_GROWTH_INTERVAL = 2000
LOSS_SCALE_BACKOFF = 0.5
LOSS_SCALE_GROWTH = 2.0

# How far a model's logits and gradients may be from a float64 reference, relative to the reference's largest
# magnitude (relative_error): the 1e-4 for fp32, and 8 unit roundoffs of the format for bf16 (2^-8) and fp16
# (2^-11). Measured on the CPU (a 6-layer, 384-wide GPT-2-style model and the nanogpt-cpu / modern-cpu presets at
# initialization): logits within 1 unit roundoff, every gradient within 2.7.
ERROR_BOUNDS = {"fp32": 1e-4, "bf16": 8 * 2.0**-8, "fp16": 8 * 2.0**-11}

def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 x -> float32 values that are bfloat16 numbers: the nearest one, ties to even, as a float32 -> bfloat16
    conversion rounds. bfloat16 keeps float32's sign, 8 exponent bits and upper 7 mantissa bits, so rounding adds
    half of the dropped 16-bit tail (minus one unless the kept part is odd) and clears the tail; a carry moves into
    the exponent as it should (the largest values round up to inf). NaN bits could carry out of the word, so NaN
    stays as it was. In place on one new array: it runs on both operands of every product."""
    xp = array_module(x)
    bits = x.view(xp.uint32)
    rounded = bits >> 16
    rounded &= 1
    rounded += 0x7FFF
    rounded += bits
    rounded &= 0xFFFF0000
    rounded = rounded.view(xp.float32)
    xp.copyto(rounded, x, where=xp.isnan(x))
    return rounded


def round_to_float16(x: np.ndarray) -> np.ndarray:
    """float32 x -> float32 values that are float16 numbers (the nearest; beyond 65504, inf)."""
    with np.errstate(over="ignore"):
        return x.astype(np.float16).astype(x.dtype)


# precision -> how `matmul` rounds its operands (None: it does not).
ROUNDINGS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {
    "fp32": None, "bf16": round_to_bfloat16, "fp16": round_to_float16}

# How `matmul` rounds its operands now; None: plain float products. Set by `autocast`, which the model enters around
# its forward and backward passes.
_operand_rounding = None


def operand_rounding(precision: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The rounding of the matrix products' operands for `precision` (ROUNDINGS); ValueError for another name."""
    if precision not in ROUNDINGS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return ROUNDINGS[precision]


@contextlib.contextmanager
def autocast(rounding: Callable[[np.ndarray], np.ndarray] | None) -> Iterator[None]:
    """Within the block, `matmul` rounds its operands with `rounding` (None: not at all); the previous setting comes
    back after it, so blocks nest."""
    global _operand_rounding
    previous, _operand_rounding = _operand_rounding, rounding
    try:
        yield
    finally:
        _operand_rounding = previous


def round_operand(x: np.ndarray) -> np.ndarray:
    """x rounded to the low precision inside autocast(rounding), x itself outside. Rounding twice changes nothing,
    so an operand of several products may be rounded once for all of them."""
    return x if _operand_rounding is None else _operand_rounding(x)


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b; inside autocast(rounding), of a and b rounded to the low precision, multiplied in float32. (Products of
    two bf16 or two fp16 numbers are exact in float32, so this is the low-precision product with float32 sums;
    NumPy's own float16 matmul would round the result and runs ~300x slower than float32.)"""
    return round_operand(a) @ round_operand(b)


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |actual - reference| / max |reference|: the error of a low-precision result relative to the scale of
    the float64 reference (an elementwise relative error would blow up at the reference's near-zero entries)."""
    return float(np.abs(actual - reference).max() / np.abs(reference).max())


def check_error(actual: np.ndarray, reference: np.ndarray, precision: str, what: str) -> float:
    """relative_error(actual, reference), or AssertionError naming `what` when it exceeds ERROR_BOUNDS[precision].
    For the tests and the GPU script: arrays on the host, reference from a float64 model."""
    error = relative_error(actual, reference)
    if not error <= ERROR_BOUNDS[precision]:
        raise AssertionError(f"{what}: {precision} is {error:.3g} from the float64 reference (relative to its "
                             f"largest magnitude), above the bound {ERROR_BOUNDS[precision]:.3g}")
    return error


class LossScaler:
    """Dynamic loss scaling for fp16 training. Per step:

        loss = model.loss(ids, targets)
        grads = model.backward(loss_scale=scaler.scale)   # every gradient multiplied by the scale
        finite = scaler.unscale(grads)                    # divided back, in place; False on inf/NaN
        if finite:
            optimizer.step(grads)                         # else the step is skipped
        scaler.update(finite)                             # halve on overflow, double after growth_interval clean

    The scale stays a power of two, so scaling and unscaling are exact in float arithmetic: without overflow or
    underflow the unscaled gradients equal those of an unscaled backward pass bit for bit.
    """

    def __init__(self, scale: float | None = None, growth_interval: int | None = None) -> None:
        # None: the module's constants, read now (so that a test can set them for a whole training run)
        scale = INITIAL_LOSS_SCALE if scale is None else scale
        growth_interval = LOSS_SCALE_GROWTH_INTERVAL if growth_interval is None else growth_interval
        check_scale(scale)
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"growth_interval must be an integer >= 1, got {growth_interval!r}")
        self.scale = float(scale)
        self.growth_interval = growth_interval
        self.clean_steps = 0  # steps without overflow since the scale last changed

    def unscale(self, grads: dict[str, np.ndarray]) -> bool:
        """Divide every gradient by the scale, in place; whether all of them are finite (no inf, no NaN)."""
        inverse = 1.0 / self.scale  # a power of two: exact
        for grad in grads.values():
            grad *= inverse
        # One sum over every gradient: inf and NaN propagate through it, and the check reads one number.
        return math.isfinite(float(sum(grad.sum() for grad in grads.values())))

    def update(self, finite: bool) -> None:
        """After a step: halve the scale on overflow (the step was skipped), double it after growth_interval clean
        steps in a row."""
        if not finite:
            self.scale *= LOSS_SCALE_BACKOFF
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps == self.growth_interval:
            self.scale *= LOSS_SCALE_GROWTH
            self.clean_steps = 0

    def state_dict(self) -> dict:
        """The scaler's state as JSON-ready numbers (train.py keeps it in the checkpoint's state.json)."""
        return {"scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, state: object) -> None:
        """Continue from a state_dict(); ValueError naming the entry when it is not one."""
        if not isinstance(state, dict) or set(state) != {"scale", "clean_steps"}:
            raise ValueError(f"a loss scaler state must be {{'scale': power of two, 'clean_steps': integer}}, "
                             f"got {state!r}")
        check_scale(state["scale"])
        clean_steps = state["clean_steps"]
        if (isinstance(clean_steps, bool) or not isinstance(clean_steps, int)
                or not 0 <= clean_steps < self.growth_interval):
            raise ValueError(f"loss scaler 'clean_steps' must be an integer in [0, {self.growth_interval}), "
                             f"got {clean_steps!r}")
        self.scale, self.clean_steps = float(state["scale"]), clean_steps


def check_scale(scale: object) -> None:
    """ValueError unless `scale` is a positive finite power of two (what keeps scaling exact)."""
    if (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf
            or math.frexp(scale)[0] != 0.5):
        raise ValueError(f"a loss scale must be a positive power of two, got {scale!r}")

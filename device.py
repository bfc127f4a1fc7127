"""The one switch between the CPU (NumPy) and an NVIDIA GPU (CuPy): which array module an array belongs to, and
moving arrays between the host and a device.

The layers call NumPy's functions on whatever arrays they hold; NumPy hands a call on CuPy arrays to CuPy
(__array_ufunc__, __array_function__), so most code needs no change. Where it cannot (creating an array from
nothing, random numbers, scatter-add) a layer asks `xp = array_module(x)` of an array it holds and calls
`xp.zeros`, `xp.arange`, `xp.add.at`, ... (DeZero's get_array_module). CuPy is imported only when a model is
moved to "cuda", never on the CPU path.
"""
from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import numpy as np
import numpy.typing as npt

GPU_REQUIREMENTS = "pip install -r requirements-gpu.txt (cupy-cuda12x; cupy-cuda13x for a CUDA 13 driver)"


class DeviceError(RuntimeError):
    """A device that cannot be used here: CuPy missing, or no GPU that CuPy can see."""


def require_cupy() -> ModuleType:
    """The cupy module, once CuPy is installed and sees a GPU; DeviceError saying what is missing otherwise."""
    try:
        import cupy
    except ImportError as error:
        raise DeviceError(f"device 'cuda' needs CuPy, which cannot be imported ({error}): {GPU_REQUIREMENTS}") \
            from None
    try:
        count, reason = cupy.cuda.runtime.getDeviceCount(), "no GPU found"
    except cupy.cuda.runtime.CUDARuntimeError as error:  # no driver, or no device the driver can open
        count, reason = 0, str(error)
    if count == 0:
        raise DeviceError(f"device 'cuda': CuPy is installed but sees no GPU ({reason}); use device 'cpu'")
    ARRAY_MODULES[cupy.ndarray] = cupy
    return cupy


# Array type -> its array module, for every type but NumPy's own: CuPy's, registered when a model first moves to
# "cuda" (tests register a fake device here too). A plain dict lookup, so the CPU path pays nothing for it.
ARRAY_MODULES: dict[type, ModuleType] = {}
# Device name -> a function returning its array module (importing it, for "cuda").
DEVICES: dict[str, Callable[[], ModuleType]] = {"cpu": lambda: np, "cuda": require_cupy}


def array_module(x: object) -> ModuleType:
    """numpy for NumPy arrays (and anything else), cupy for CuPy arrays: the `xp` whose functions suit x."""
    return ARRAY_MODULES.get(type(x), np)


def device_module(device: str) -> ModuleType:
    """The array module of a device name, "cpu" or "cuda"; ValueError for any other name, DeviceError when the
    device cannot be used here."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r:.40}")
    return DEVICES[device]()


def is_array(x: object) -> bool:
    """Whether x is an array of NumPy or of a registered device (a CuPy array once CuPy is in use)."""
    return isinstance(x, np.ndarray) or type(x) in ARRAY_MODULES


def to_host(x: npt.ArrayLike) -> np.ndarray:
    """x as a NumPy array: a device array is copied to the host, anything else goes through np.asarray."""
    xp = array_module(x)
    return np.asarray(x) if xp is np else xp.asnumpy(x)


def to_device(x: npt.ArrayLike, device: str) -> np.ndarray:
    """x on `device` ("cpu" or "cuda"): copied there unless it is there already."""
    xp = device_module(device)
    return to_host(x) if xp is np else xp.asarray(x)


def random_generator(xp: ModuleType, seed: int | list[int]) -> np.random.Generator:
    """A generator of xp's arrays (for dropout masks), seeded by an integer or a list of them. CuPy's generators
    take a single integer: a list is hashed into one by NumPy's SeedSequence."""
    if xp is np:
        return np.random.default_rng(seed)
    return xp.random.default_rng(int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0]))

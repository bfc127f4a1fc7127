"""A fake device for the tests: the check that a compute module never calls NumPy directly where it should ask the
array module (`xp = device.array_module(x)`), run on a machine without a GPU.

Its arrays, StrictDeviceArray, compute with NumPy (so results equal the CPU's bit for bit) but behave as CuPy's
do at the boundary: any NumPy function, ufunc or index that mixes them with a plain NumPy array (ndim > 0) raises
HostArrayError, as CuPy refuses NumPy arrays. An array made with np.zeros / np.arange / np.random on the compute
path is such a plain array, so it is caught where it first meets the device's. Stricter than CuPy in two ways,
which catch hidden host-to-device copies: an index or an assigned value that is a NumPy array is refused too (CuPy
copies it over silently), and np.<ufunc>.at is refused (it does not reach CuPy arrays: xp.add.at does).
Every read of a device number on the host (float(), int(), bool(), .item(), .tolist()) adds one to
StrictDeviceArray.host_reads, so a test can count what a training step copies back.

`use_strict_device(monkeypatch)` registers it as device "strict": model.to("strict").
"""
from __future__ import annotations

import types

import numpy as np

import device


class HostArrayError(TypeError):
    """A plain NumPy array met a device array: the code created it with NumPy instead of the array module."""


def is_host_array(value: object) -> bool:
    return isinstance(value, np.ndarray) and not isinstance(value, StrictDeviceArray) and value.ndim > 0


def refuse_host_arrays(values: object, what: str) -> None:
    """HostArrayError when `values` (an operand, or nested lists, tuples and dicts of them) holds a host array."""
    if isinstance(values, dict):
        values = list(values.values())
    if isinstance(values, (list, tuple)):
        for value in values:
            refuse_host_arrays(value, what)
    elif is_host_array(values):
        raise HostArrayError(f"{what} mixes a NumPy array of shape {values.shape} ({values.dtype}) with device "
                             "arrays: create it with the array module (xp = array_module(x)) or move it explicitly")


def plain(value: object) -> object:
    """Device arrays (nested in lists, tuples and dicts too) as plain NumPy views of the same memory."""
    if isinstance(value, StrictDeviceArray):
        return value.view(np.ndarray)
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def on_device(value: object) -> object:
    """Results of a computation on the device are device arrays: NumPy arrays and scalars become StrictDeviceArrays
    (a scalar a 0-d array, as CuPy returns)."""
    if isinstance(value, np.ndarray):
        return value.view(StrictDeviceArray)
    if isinstance(value, np.generic):
        return np.asarray(value).view(StrictDeviceArray)
    if isinstance(value, (list, tuple)):
        return type(value)(on_device(item) for item in value)
    return value


class StrictDeviceArray(np.ndarray):
    """An array on the fake device (see the module docstring)."""

    host_reads = 0  # numbers read back on the host, over all arrays

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "at":
            raise HostArrayError(f"np.{ufunc.__name__}.at does not reach device arrays: use xp.{ufunc.__name__}.at")
        refuse_host_arrays([inputs, kwargs], f"np.{ufunc.__name__}")
        result = getattr(ufunc, method)(*plain(inputs), **plain(kwargs))
        if kwargs.get("out") is not None:  # written in place into the device arrays' memory
            out = kwargs["out"]
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return on_device(result)

    def __array_function__(self, func, types, args, kwargs):
        refuse_host_arrays([args, kwargs], f"np.{func.__name__}")
        return on_device(func(*plain(args), **plain(kwargs)))

    def __getitem__(self, index):
        refuse_host_arrays(index, "indexing a device array")
        return on_device(super().__getitem__(plain(index)))

    def __setitem__(self, index, value):
        refuse_host_arrays([index, value], "assigning into a device array")
        super().__setitem__(plain(index), plain(value))

    def read(self, method: str, *args):
        StrictDeviceArray.host_reads += 1
        return getattr(self.view(np.ndarray), method)(*args)

    def __float__(self):
        return self.read("__float__")

    def __int__(self):
        return self.read("__int__")

    def __index__(self):
        return self.read("__index__")

    def __bool__(self):
        return self.read("__bool__")

    def item(self, *args):
        return self.read("item", *args)

    def tolist(self):
        return self.read("tolist")


class StrictGenerator:
    """The fake device's random generator: NumPy's, returning device arrays."""

    def __init__(self, seed: int) -> None:
        self.generator = np.random.default_rng(seed)

    def __getattr__(self, name: str):
        method = getattr(self.generator, name)
        return lambda *args, **kwargs: on_device(method(*args, **kwargs))


class ScatterAdd:
    """xp.add for the fake device: only its `.at`, which np.add.at cannot be on device arrays."""

    @staticmethod
    def at(target: StrictDeviceArray, indices: object, values: object) -> None:
        refuse_host_arrays([target, indices, values], "xp.add.at")
        np.add.at(plain(target), plain(indices), plain(values))


def creating(function):
    """A NumPy function that creates an array from nothing, creating it on the device."""
    return lambda *args, **kwargs: on_device(function(*args, **kwargs))


class StrictModule(types.SimpleNamespace):
    """The fake device's array module: NumPy's names, with array creation, random numbers and add.at on the device."""

    def __getattr__(self, name: str):
        return getattr(np, name)


STRICT = StrictModule(
    # a host array crossing to the device is copied, as a transfer would
    asarray=lambda x, dtype=None: on_device(np.array(plain(x), dtype=dtype)),
    asnumpy=lambda x: np.array(plain(x)),
    zeros=creating(np.zeros), empty=creating(np.empty), ones=creating(np.ones), full=creating(np.full),
    arange=creating(np.arange),
    random=types.SimpleNamespace(default_rng=StrictGenerator),
    add=ScatterAdd,
)


def use_strict_device(monkeypatch) -> None:
    """Register the fake device as "strict" for one test (monkeypatch undoes it)."""
    monkeypatch.setitem(device.DEVICES, "strict", lambda: STRICT)
    monkeypatch.setitem(device.ARRAY_MODULES, StrictDeviceArray, STRICT)

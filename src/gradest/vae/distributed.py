r"""Data-parallel VAE training on ``torch.distributed``: W processes, one global batch, the same run.

    ∇ Σ_{i∈B} ℓ_i = Σ_{r<W} ∇ Σ_{i∈B_r} ℓ_i          B = B_0 ∪ … ∪ B_{W−1}, consecutive shards

Every process (rank) holds the whole data set and the same model, draws the same shuffle, and takes
its shard B_r of each global batch (``torch.tensor_split``: sizes differ by at most one). It back-
propagates the sum of its images' losses; one ``all_reduce`` (SUM) of the flattened gradients gives
every rank the single-process gradient, so the identical Adam steps keep the replicas identical.
The noise is the single-process noise: each rank draws the *global* batch's noise from the shared
noise generator (ε ``[K, B, L]``, the images on the axis before the last) and keeps its shard
(:meth:`Group.noise`), so the union of the ranks' draws is the one-process draw and the generators
stay in step. The score estimator's moving-average baseline absorbs the global batch's mean
(:meth:`Group.baseline`). What remains different is the order of floating-point sums (BLAS blocking
over B_r rows instead of B, the gradient and metric reductions): metrics agree with one process to
float32 rounding, amplified a little by each Adam step (measured: tests/test_vae_ddp.py).

Rank 0 writes (config, checkpoints, metrics, report) and runs the gradient monitor; every rank
checks finiteness together (a NaN on one rank stops all of them at the same step). A rank that fails
says why (:class:`RankFailed`) and marks itself as having spoken; its failure makes the others' next
collective fail, and they raise :class:`PeerFailed`. A rank that dies without a word (killed, out of
memory) cannot speak for itself, so the survivors take a roll call on torchrun's store (each writes
its rank; after :data:`ROLL_CALL_SECONDS` the missing ones are the dead): the lowest survivor names
them in one line, and the others stop quietly. The failure is told once.

Started by ``torchrun --nproc-per-node W -m gradest vae train …`` (its environment: RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); gloo on the CPU, NCCL on GPUs (rank r on
``cuda:LOCAL_RANK``). Without that environment, or with W = 1, :func:`session` gives the
single-process group, whose every method is the identity: the one-process code path is unchanged.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from gradest.errors import GradestError

#: how long the survivors of a failure wait for each other to answer the roll call
ROLL_CALL_SECONDS = 2.0


class PeerFailed(GradestError):
    """Another rank of the group stopped. ``lost``: the ranks that vanished without a word (the roll
    call's missing); ``speak``: whether this rank is the one to tell it (the lowest survivor, and only
    if some rank did not speak for itself)."""

    def __init__(self, message: str, lost: tuple[int, ...] = (), speak: bool = False) -> None:
        super().__init__(message)
        self.lost, self.speak = lost, speak


class RankFailed(GradestError):
    """This rank failed after training started (the others stop with :class:`PeerFailed`)."""


class Group:
    """The single-process group: rank 0 of 1; sharding, noise, baseline and sums are identities."""

    rank = 0
    world = 1
    started = False  # whether a collective has run: errors before it are every rank's alike

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes the run's files, prints, and runs the gradient monitor."""
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        return batch

    def noise(self, generator: torch.Generator, images: int):
        """Within the block, draws from ``generator`` for a global batch of ``images`` are this rank's."""
        return nullcontext()

    def baseline(self, baseline: Any) -> Any:
        return baseline

    def any(self, flag: bool) -> bool:
        return flag

    def sum_gradients(self, parameters) -> None:
        pass

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return value

    def barrier(self) -> None:
        """Wait for every rank (rank 0's files are complete when the others return)."""

    def announce_failure(self) -> None:
        """Mark this rank as having told its own failure (the roll call does not name it again)."""


class ProcessGroup(Group):
    """Rank ``rank`` of ``world`` processes in torch.distributed's default group."""

    def __init__(self, rank: int, world: int, device: torch.device | None = None) -> None:
        self.rank, self.world = rank, world
        self._device = torch.device("cpu") if device is None else device  # NCCL reduces CUDA tensors only

    def _bounds(self, size: int) -> tuple[int, int]:
        """[start, stop) of this rank's shard of ``size`` images (torch.tensor_split's sizes)."""
        base, extra = divmod(size, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        start, stop = self._bounds(batch.shape[0])
        return batch[start:stop]

    def noise(self, generator: torch.Generator, images: int) -> _ShardedNoise:
        return _ShardedNoise(generator, self, images)

    def baseline(self, baseline: Any) -> Any:
        return None if baseline is None else _GlobalMean(baseline, self)

    def _all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        try:
            dist.all_reduce(tensor)
            self.started = True
        except (RuntimeError, ValueError) as err:  # gloo/NCCL: a peer closed its connection or died
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise _peer_failed(self.rank, self.world, f"another process stopped ({reason})") from None
        return tensor

    def announce_failure(self) -> None:
        store = _store()
        if store is not None:
            try:
                store.set(f"{_ROLL}/spoke/{self.rank}", "1")
            except (RuntimeError, ValueError):
                pass

    def any(self, flag: bool) -> bool:
        return bool(self._all_reduce(torch.tensor([float(flag)], device=self._device)) > 0)

    def sum_gradients(self, parameters) -> None:
        """p.grad ← Σ_ranks p.grad, one collective over the flattened gradients."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = self._all_reduce(torch.cat([g.reshape(-1) for g in grads]))
        for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
            g.copy_(part.view_as(g))

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(value.detach().clone().reshape(1)).reshape(value.shape)

    def barrier(self) -> None:
        self._all_reduce(torch.zeros(1, device=self._device))  # a collective: a dead peer raises PeerFailed


class _ShardedNoise(TorchFunctionMode):
    """Draws from ``generator`` made for the global batch, of which this rank keeps its shard.

    Inside the block, ``torch.randn``/``torch.rand`` with that generator and a shape whose axis
    before the last holds this rank's images draw that axis at the global batch's size and return
    the rank's rows: the same numbers one process draws for those images, and every rank's
    generator advances as the one process's does. Other draws from it cannot be sharded: refused.
    """

    _FILLS = (torch.randn, torch.rand)

    def __init__(self, generator: torch.Generator, group: ProcessGroup, total: int) -> None:
        super().__init__()
        self.generator, self.group, self.total = generator, group, total
        self.start, self.stop = group._bounds(total)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("generator") is not self.generator:
            return func(*args, **kwargs)
        shape = list(args[0] if len(args) == 1 and not isinstance(args[0], int) else args)
        if func not in self._FILLS or len(shape) < 2 or shape[-2] != self.stop - self.start:
            raise GradestError(
                f"data-parallel training shards noise drawn by torch.randn/torch.rand as [..., B, D]; "
                f"this objective draws with {getattr(func, '__name__', func)} {shape}: train it in one "
                "process"
            )
        shape[-2] = self.total
        return func(tuple(shape), **kwargs)[..., self.start:self.stop, :].contiguous()


class _GlobalMean:
    """A moving-average baseline fed the global batch's mean cost (the sum over ranks / the count)."""

    min_samples = 1

    def __init__(self, inner: Any, group: ProcessGroup) -> None:
        self.inner, self.group = inner, group

    def __call__(self, values: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        b = torch.full_like(values, self.inner.value)  # read before this batch is absorbed
        total = torch.stack([values.detach().double().sum(), torch.tensor(float(values.numel()),
                                                                           dtype=torch.float64,
                                                                           device=values.device)])
        total = self.group._all_reduce(total)
        self.inner((total[0] / total[1]).to(values.dtype).reshape(1))
        return b


_ROLL = f"gradest/roll-call/{os.environ.get('TORCHELASTIC_RUN_ID', '-')}/" \
        f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _store():
    """A client of the rendezvous store (torchrun's agent keeps it; else rank 0's): None if unreachable."""
    import datetime

    import torch.distributed as dist

    try:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=datetime.timedelta(seconds=5))
    except (KeyError, ValueError, RuntimeError, OSError):
        return None


#: whether this process is taking the roll call (a SIGTERM meanwhile must not start another)
_ROLLING = False


def _roll_call(rank: int, world: int, wait: float | None = None) -> tuple[tuple[int, ...], bool]:
    """After a failure: (the ranks that neither answered nor told their own failure, whether this rank
    tells it: the lowest survivor, when some rank vanished or none has spoken). Without a store nobody
    can be named: ((), rank == 0)."""
    global _ROLLING
    store = _store()
    if store is None:
        return (), rank == 0
    _ROLLING = True
    try:
        store.set(f"{_ROLL}/alive/{rank}", "1")
        time.sleep(ROLL_CALL_SECONDS if wait is None else wait)

        def present(kind: str, r: int) -> bool:
            return bool(store.check([f"{_ROLL}/{kind}/{r}"]))

        alive = [r for r in range(world) if present("alive", r)]
        spoke = [r for r in range(world) if present("spoke", r)]
        lost = tuple(r for r in range(world) if r not in alive and r not in spoke)
    except (RuntimeError, ValueError):
        return (), rank == 0
    finally:
        _ROLLING = False
    return lost, (bool(lost) or not spoke) and rank == min(alive, default=rank)


def _peer_failed(rank: int, world: int, otherwise: str) -> PeerFailed:
    """The failure as the roll call finds it: the ranks that vanished, named, or ``otherwise``."""
    lost, speak = _roll_call(rank, world)
    if lost:
        names = ", ".join(str(r) for r in lost)
        otherwise = (f"process{'es' if len(lost) > 1 else ''} {names} of {world} stopped without telling why "
                     "(killed, out of memory, or crashed)")
    return PeerFailed(otherwise, lost, speak)


def _terminated(signum, frame) -> None:
    """torchrun sends SIGTERM to the survivors as soon as one process fails: they take the roll call
    (within torchrun's 30 s grace) and stop with PeerFailed, the lowest of them telling what happened."""
    if _ROLLING:
        return  # the roll call under way tells it
    rank, world, _ = world_from_env()
    raise _peer_failed(rank, world, f"torchrun stopped process {rank} of {world} (SIGTERM)")


def local_world_from_env() -> int:
    """Processes per node as torchrun started them (LOCAL_WORLD_SIZE; the world size without it)."""
    try:
        return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    except ValueError:
        return 1


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    names = (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0))
    try:
        return tuple(int(os.environ.get(k, d)) for k, d in names)
    except ValueError:
        raise GradestError("RANK, WORLD_SIZE, LOCAL_RANK must be integers, as torchrun sets them") from None


def device_for(device: str, local_rank: int, world: int) -> str:
    """The device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if world > 1 and device.startswith("cuda:"):
        raise GradestError(
            f"--device {device} under torchrun: give --device cuda, and each process uses the GPU of "
            "its local rank (cuda:LOCAL_RANK)"
        )
    return f"cuda:{local_rank}" if world > 1 and device == "cuda" else device


@contextmanager
def session(device: str = "cpu") -> Iterator[Group]:
    """The group of this process: torchrun's (gloo on the CPU, NCCL on CUDA) or the single process.

    The process group is created on entry and destroyed on exit.
    """
    rank, world, local_rank = world_from_env()
    if world <= 1:
        yield Group()
        return
    import torch.distributed as dist

    if not dist.is_available():
        raise GradestError("this PyTorch build has no torch.distributed; train in one process")
    cuda = device.startswith("cuda")
    if cuda and local_rank >= torch.cuda.device_count():
        raise GradestError(
            f"process {rank} (local rank {local_rank}) needs GPU cuda:{local_rank}, but "
            f"{torch.cuda.device_count()} are visible; start at most that many processes per node"
        )
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    try:
        dist.init_process_group(backend, rank=rank, world_size=world)
    except (RuntimeError, ValueError) as err:  # no MASTER_ADDR, a port in use, a peer that never came
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GradestError(
            f"process {rank} of {world} could not join the {backend} group ({reason}); start the "
            "processes with torchrun --nproc-per-node N -m gradest vae train …"
        ) from None
    group = ProcessGroup(rank, world, torch.device(f"cuda:{local_rank}") if cuda else None)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        yield group
    finally:
        signal.signal(signal.SIGTERM, previous)
        dist.destroy_process_group()


def check_batches(group: Group, n: int, batch_size: int) -> None:
    """Every batch (the last one too) must give each rank at least one image."""
    last = n - (-(-n // batch_size) - 1) * batch_size
    if min(batch_size, last) < group.world:
        raise GradestError(
            f"{n} training images in batches of {batch_size} leave a last batch of {last}, fewer than "
            f"the {group.world} processes; choose a --batch-size whose last batch has ≥ {group.world} images"
        )


__all__ = [
    "Group",
    "PeerFailed",
    "ProcessGroup",
    "RankFailed",
    "check_batches",
    "device_for",
    "local_world_from_env",
    "session",
    "world_from_env",
]

"""Several processes of one command: how many there are, which one this is, where each works, how they meet.

``accelerate launch`` and ``torchrun`` start N copies of a command and tell each one who it is through
environment variables (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``; mpirun's ``PMI_SIZE``,
``OMPI_COMM_WORLD_SIZE``...). :func:`processes` reads them, refuses a launch this machine cannot serve, and sets
up ``torch.distributed`` (through accelerate's ``PartialState``, so an ``Accelerator`` made later joins it):

- Launched plainly (no launcher, or one process): one process on the device of the ``device`` setting; nothing
  is set up, everything runs as it always did.
- N processes with the CPU asked for (``ACCELERATE_USE_CPU=1``, or ``--device cpu``): N CPU processes over gloo.
- N processes otherwise: one GPU each (``cuda:LOCAL_RANK``, nccl). Refused when torch sees no GPU (a multi-GPU
  config on a CPU-only machine would otherwise run N duplicate jobs that each believe they are alone) and when
  this machine starts more processes than it has GPUs.

Barriers and the exchange of Python objects go through a gloo group, so a process that waits while the main
process does what cannot be split (a full-data reference, a report) waits on the CPU, for up to `WAIT`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from rsdistill.core.artifacts import Stage
from rsdistill.core.errors import RSDistillError
from rsdistill.core.runtime import resolve_device

T = TypeVar("T")
R = TypeVar("R")
WORLD_SIZE = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
LOCAL_RANK = ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK")
LOCAL_SIZE = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")
TRUE = ("1", "true", "yes", "y", "on")
# How long a process waits at a barrier for the others (the main process may train a full-data reference alone).
WAIT = timedelta(hours=48)
CPU_LAUNCH = "ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N -m rsdistill ..."


def _first_int(env: Mapping[str, str], names: Sequence[str], default: int) -> int:
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


@dataclass(frozen=True)
class Launch:
    """What the launcher's environment variables say (nothing is set up to read them).

    Attributes:
        processes: Processes in the whole launch (all machines).
        rank: This process's index among them.
        local_rank: Its index on this machine.
        local_processes: Processes on this machine.
        cpu: Whether the launch asks for the CPU (``ACCELERATE_USE_CPU``, set by ``accelerate launch --cpu``).
    """

    processes: int = 1
    rank: int = 0
    local_rank: int = 0
    local_processes: int = 1
    cpu: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Launch:
        env = os.environ if env is None else env
        processes = _first_int(env, WORLD_SIZE, 1)
        return cls(
            processes,
            _first_int(env, RANK, 0),
            _first_int(env, LOCAL_RANK, 0),
            _first_int(env, LOCAL_SIZE, processes),
            env.get("ACCELERATE_USE_CPU", "").strip().lower() in TRUE,
        )


def check_launch(launch: Launch, device: str, gpus: int) -> bool:
    """Whether the processes of a launch of several work on the CPU, after refusing a launch this machine
    cannot serve.

    Args:
        launch: The launch (`Launch.from_env`), with more than one process.
        device: The ``device`` setting (``--device``).
        gpus: CUDA GPUs torch sees on this machine.

    Raises:
        RSDistillError: For a launch of GPU processes on a machine without GPUs, more processes on this machine
            than it has GPUs, or a ``--device`` that names one GPU for every process.
    """
    n = launch.processes
    if launch.cpu or device == "cpu":
        return True
    if device not in ("auto", "cuda"):
        raise RSDistillError(
            f"--device {device!r} (the device setting) names one device, but this command was launched as {n} "
            "processes, each of which takes its own GPU (cuda:LOCAL_RANK). Use --device auto (or cuda), or "
            "--device cpu to run the processes on the CPU."
        )
    if gpus == 0:
        raise RSDistillError(
            f"This command was launched as {n} processes for GPUs (accelerate launch --multi_gpu, or torchrun "
            "without ACCELERATE_USE_CPU), but torch sees no CUDA GPU on this machine: each process would run the "
            f"whole job alone. Launch it once, without the launcher, or run {n} processes on the CPU: "
            f"{CPU_LAUNCH} (or pass --device cpu)."
        )
    if launch.local_processes > gpus:
        raise RSDistillError(
            f"This launch starts {launch.local_processes} processes on this machine, which has {gpus} CUDA "
            f"GPU(s). Start at most {gpus} per machine (accelerate launch --num_processes, torchrun "
            "--nproc_per_node; with several machines, the processes per machine), or run on the CPU with "
            "ACCELERATE_USE_CPU=1."
        )
    return False


@dataclass(frozen=True)
class Processes:
    """The processes of this command and this one's place among them (one process when launched plainly).

    Attributes:
        count: Processes in all.
        rank: This one's index; 0 is the main process, the one that writes what is shared.
        device: Where this process computes.
        group: The gloo group barriers and object exchange go through (None for one process).
    """

    count: int = 1
    rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.count > 1

    @property
    def cpu(self) -> bool:
        return self.device.type == "cpu"

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share of `items`: every `count`-th one from its rank on (the same for any order of
        arrival, so a process's share depends only on the list and the number of processes)."""
        return list(items[self.rank :: self.count])

    def barrier(self) -> None:
        """Waits until every process reaches this point."""
        if self.distributed:
            torch.distributed.barrier(group=self.group)

    def gather(self, value: T) -> list[T]:
        """Every process's `value` (picklable), in rank order, on every process."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.count
        torch.distributed.all_gather_object(values, value, group=self.group)
        return values

    def map_sharded(self, work: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`work(item)` for every item, each computed by one process (this one does its `shard`), in the order
        of `items`, on every process.

        Every process must call it with the same `items`; with one process it is ``[work(i) for i in items]``.
        """
        mine = [(position, work(items[position])) for position in self.shard(range(len(items)))]
        results: list[Any] = [None] * len(items)
        for part in self.gather(mine):
            for position, result in part:
                results[position] = result
        return results

    def found_on_main(self, find: Callable[[], T | None], what: str) -> T | None:
        """What `find` reads from disk (a cache), the same on every process: the main process looks first and
        the others look only when it found something, so that every process takes the same branch.

        Args:
            find: Reads the thing, or returns None when it is not there.
            what: The thing, for the error below.

        Raises:
            RSDistillError: When the main process found it but another process does not see it (a folder that
                does not lie on a filesystem every machine sees).
        """
        found = find() if self.is_main else None
        if not self.share(found is not None):
            return None
        if found is None:
            found = find()
            if found is None:
                raise RSDistillError(
                    f"The main process of this launch found {what}, but process {self.rank} does not see it: "
                    "with several machines, RSDISTILL_CACHE, data.cache_dir and the output folders must lie on a "
                    "filesystem every machine sees (docs/scaling.md)."
                )
        return found

    def share(self, value: T | None) -> T:
        """The main process's `value` (picklable), on every process; what the others pass is ignored."""
        if not self.distributed:
            return value  # type: ignore[return-value]
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def on_main(self, work: Callable[[], T]) -> T:
        """Runs `work` on the main process `alone` while the others wait; every process gets its result."""
        if not self.is_main:
            return self.share(None)
        with alone():
            result = work()
        return self.share(result)

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (filling a cache), the others once it is done; each `alone`."""
        if not self.is_main:
            self.barrier()
        with alone():
            yield
        if self.is_main:
            self.barrier()


_LAUNCHED: Processes | None = None
_ALONE = False


@contextmanager
def alone() -> Iterator[None]:
    """Within the block, `processes` answers one process (on this process's device): for what one process does
    while the others wait (`Processes.on_main`), which must not in turn wait for them."""
    global _ALONE
    previous, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = previous


def processes(device: str = "auto") -> Processes:
    """The processes of this command, set up on first use under a launcher (see the module docstring).

    Args:
        device: The ``device`` setting: one process uses it as it is (`resolve_device`); under a launch it picks
            between the GPUs (``auto``, ``cuda``) and the CPU (``cpu``).

    Raises:
        RSDistillError: For a launch this machine cannot serve (`check_launch`), or a later call in the same
            launch that asks for the other kind of device.
    """
    global _LAUNCHED
    launch = Launch.from_env()
    if launch.processes <= 1:
        return Processes(device=resolve_device(device))
    if _ALONE and _LAUNCHED is not None:
        return Processes(device=_LAUNCHED.device)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpu = check_launch(launch, device, gpus)
    if _LAUNCHED is None:
        _LAUNCHED = _set_up(launch, cpu)
    elif _LAUNCHED.cpu != cpu:
        raise RSDistillError(
            f"--device {device!r} (the device setting): the processes of this launch already work on "
            f"{_LAUNCHED.device.type}; one launch uses one kind of device. Give every stage the same --device."
        )
    return _LAUNCHED


def _set_up(launch: Launch, cpu: bool) -> Processes:
    from accelerate import PartialState

    state = PartialState(cpu=cpu, timeout=WAIT)
    if state.num_processes != launch.processes:
        raise RSDistillError(
            f"accelerate set this process up as {state.num_processes} process(es), but the launch started "
            f"{launch.processes}; accelerate was initialised before rsdistill could choose the device. Set "
            "ACCELERATE_USE_CPU=1 for a launch on the CPU, or launch on a machine with a GPU per process."
        )
    group = torch.distributed.new_group(backend="gloo", timeout=WAIT) if state.backend != "gloo" else None
    return Processes(state.num_processes, state.process_index, state.device, group)


@contextmanager
def build_stage(stage: Stage, procs: Processes, extra: dict[str, Any] | None = None) -> Iterator[Path]:
    """`Stage.build` for the processes of a launch: the main process holds the stage (its lock, the checks of
    what is at its path, the move into place and the manifest) and every process gets its partial folder.

    The block runs on every process; what only the main process may write (the merged outputs) goes after a
    `Processes.barrier` in it. Every process leaves once the finished folder is in place. With one process,
    this is `Stage.build`.
    """
    with ExitStack() as stack:
        if procs.is_main:
            stack.enter_context(stage.build(extra))
        procs.barrier()
        yield stage.partial_path
        procs.barrier()
    procs.barrier()

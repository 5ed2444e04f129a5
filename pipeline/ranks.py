"""The processes of a run split across ranks: the torch.distributed process group and its clocks.

Under `torchrun` (or any launcher that sets `RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`)
each process joins one process group: `gloo` when every logical device is a CPU, `nccl` when every
one is a CUDA device. `rbln_config['ranks']` says which rank runs which logical device
(`pipeline.remote_calls` does the calling).

Each rank times its work on its own CLOCK_MONOTONIC, which on another host is unrelated to rank
0's. `exchange_clocks` measures each rank's offset from rank 0 over the process group, NTP style:
rank 0 reads its clock (t0), pings the rank, which answers with its own reading (t_r), and reads its
clock again (t1). Then t_r - (t0 + t1) / 2 is the offset, within half the round trip (t_r was read
somewhere between t0 and t1). The round with the smallest round trip of several is kept.

`RBLN_TEST_CLOCK_SKEW_NS=RANK:NS` is for tests only: it shifts every clock reading of process RANK
(monotonic, boottime, wall clock) by NS nanoseconds, as if it ran on a host with another clock,
so that tests can check that a merge finds and removes the offset. `RBLN_TEST_BUSY_MS=RANK:MS`,
for tests only too: serving rank RANK is busy MS milliseconds each time it enters a pipeline call
(`remote_calls.serve`), so that tests can check that rank 0's sends do not hold that wait.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .config import ConfigError, RBLNConfig

ENV_TEST_CLOCK_SKEW = "RBLN_TEST_CLOCK_SKEW_NS"
ENV_TEST_BUSY = "RBLN_TEST_BUSY_MS"
CLOCK_ROUNDS = 32
# How long a rank waits for another before giving up (a dead peer usually fails faster: its socket closes).
TIMEOUT = timedelta(seconds=float(os.environ.get("RBLN_RANK_TIMEOUT_S", "300")))


@dataclass(frozen=True)
class RankGroup:
    rank: int
    world_size: int
    backend: str

    @property
    def comm_device(self) -> torch.device:
        """Where tensors must be to cross ranks: nccl moves CUDA tensors, gloo host ones."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


class RankLost(RuntimeError):
    """A message to or from another rank failed: its process died (or its host went away)."""

    def __init__(self, rank: int, error: BaseException):
        super().__init__(f"rank {rank} stopped answering (its process died?): {' '.join(str(error).split())}")
        self.rank = rank


def send(tensor: torch.Tensor, peer: int) -> None:
    """`dist.send`; `RankLost` names the peer when it fails."""
    try:
        dist.send(tensor, peer)
    except RuntimeError as exc:
        raise RankLost(peer, exc) from exc


def recv(tensor: torch.Tensor, peer: int) -> None:
    """`dist.recv` from `peer`; `RankLost` names the peer when it fails."""
    try:
        dist.recv(tensor, peer)
    except RuntimeError as exc:
        raise RankLost(peer, exc) from exc


@dataclass(frozen=True)
class ClockOffset:
    """Rank `rank`'s clock minus rank 0's, as measured (`offset_ns`), within `uncertainty_ns`."""

    rank: int
    offset_ns: int
    uncertainty_ns: int
    round_trip_ns: int


def launched_world() -> tuple[int, int] | None:
    """(rank, world size) when a launcher such as torchrun started this process, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def check_ranks(cfg: RBLNConfig, world_size: int) -> None:
    """Every rank of `rbln_config['ranks']` must be a process of this run."""
    for device, rank in enumerate(cfg.ranks or ()):
        if rank >= world_size:
            raise ConfigError(
                f"rbln_config['ranks'][{device}]={rank} is not a rank of this run of {world_size} process(es); "
                f"valid: 0..{world_size - 1} (start more with torchrun --nproc-per-node N)")


def backend_for(devices: list[torch.device]) -> str:
    kinds = {d.type for d in devices}
    return "nccl" if kinds == {"cuda"} else "gloo"


def join_process_group(cfg: RBLNConfig, devices: list[torch.device]) -> RankGroup:
    """Join the process group the launcher set up (`launched_world`), after checking the rank map.
    A test clock skew (`RBLN_TEST_CLOCK_SKEW_NS`) is applied first, before anything reads a clock."""
    rank, world_size = launched_world() or (0, 1)
    check_ranks(cfg, world_size)
    _apply_test_clock_skew(rank)
    backend = backend_for(devices)
    if backend == "nccl":
        torch.cuda.set_device(devices[cfg.ranks.index(rank)] if cfg.ranks and rank in cfg.ranks else devices[0])
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=TIMEOUT)
    return RankGroup(rank, world_size, backend)


def leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _test_setting(name: str, rank: int, example: str) -> int:
    """The amount a tests-only `RANK:AMOUNT` variable gives this rank; 0 when unset or for another rank."""
    raw = os.environ.get(name)
    if not raw:
        return 0
    target, _, amount = raw.partition(":")
    if not (target.strip().isdigit() and amount.strip().lstrip("-").isdigit()):
        raise ConfigError(f"{name}={raw!r} is not valid; valid: RANK:{example} (tests only)")
    return int(amount) if int(target) == rank else 0


def busy_for_tests_s(rank: int) -> float:
    """How long this serving rank is busy entering each pipeline call (`RBLN_TEST_BUSY_MS`, tests only)."""
    return _test_setting(ENV_TEST_BUSY, rank, "MILLISECONDS, e.g. 1:2000") / 1000


def _apply_test_clock_skew(rank: int) -> None:
    shift = _test_setting(ENV_TEST_CLOCK_SKEW, rank, "NANOSECONDS, e.g. 1:5000000000")
    if not shift:
        return
    monotonic_ns, clock_gettime_ns, time_ns = time.monotonic_ns, time.clock_gettime_ns, time.time_ns
    time.monotonic_ns = lambda: monotonic_ns() + shift
    time.clock_gettime_ns = lambda clock: clock_gettime_ns(clock) + shift
    time.time_ns = lambda: time_ns() + shift


def exchange_clocks(group: RankGroup, rounds: int = CLOCK_ROUNDS) -> ClockOffset:
    """Measure every rank's clock offset from rank 0 (collective: every rank calls it). Returns this
    rank's (rank 0: offset 0, uncertainty 0)."""
    device = group.comm_device
    buf = torch.zeros(3, dtype=torch.int64, device=device)
    if group.rank != 0:
        for _ in range(rounds):
            recv(buf, 0)
            buf[0] = time.monotonic_ns()
            send(buf, 0)
        recv(buf, 0)
        offset, uncertainty, round_trip = (int(v) for v in buf.tolist())
        return ClockOffset(group.rank, offset, uncertainty, round_trip)
    for peer in range(1, group.world_size):
        best = None
        for _ in range(rounds):
            t0 = time.monotonic_ns()
            send(buf, peer)
            recv(buf, peer)
            t1 = time.monotonic_ns()
            remote = int(buf[0])
            if best is None or t1 - t0 < best[1] - best[0]:
                best = (t0, t1, remote)
        t0, t1, remote = best
        # Integer halves: the offset is rounded down, the uncertainty up, so the truth stays inside.
        send(torch.tensor([remote - (t0 + t1) // 2, (t1 - t0 + 1) // 2, t1 - t0], dtype=torch.int64,
                               device=device), peer)
    return ClockOffset(0, 0, 0, 0)

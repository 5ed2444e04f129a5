"""Per-device and per-submodule totals of a run, accumulated while the capture streams by."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from pipeline.contract import TickLayout


@dataclass
class SubmoduleTotals:
    """One submodule's calls and their summed times (ns) in a run."""

    device: int = 0
    calls: int = 0
    commands: int = 0
    split_commands: int = 0
    total_ns: int = 0
    compute_ns: int = 0
    dma_ns: int = 0


@dataclass
class RunStats:
    devices: dict = field(default_factory=dict)  # logical -> torch device
    submodules: dict = field(default_factory=lambda: defaultdict(SubmoduleTotals))  # name -> SubmoduleTotals
    host_ns: dict = field(default_factory=lambda: defaultdict(int))
    start_ns: int | None = None
    end_ns: int | None = None
    # capture program id -> (its TickLayout, its number of split commands), worked out on its first call
    _programs: dict = field(default_factory=dict, repr=False)

    def _span(self, start: int, end: int) -> None:
        self.start_ns = start if self.start_ns is None else min(self.start_ns, start)
        self.end_ns = end if self.end_ns is None else max(self.end_ns, end)

    def add_invocation(self, program_id: int, program, ticks) -> None:
        """One call of `program` (the capture's program `program_id`) with boundaries `ticks`."""
        known = self._programs.get(program_id)
        if known is None:
            known = self._programs[program_id] = (TickLayout.of(program),
                                                  sum(1 for c in program.commands if c.command_count > 1))
        layout, splits = known
        s = self.submodules[program.submodule]
        s.device = program.device
        s.calls += 1
        s.commands += layout.commands
        s.split_commands += splits
        first, compute_start, compute_end, last = (int(ticks[0]), int(ticks[layout.command(0)]),
                                                   int(ticks[layout.output(0)]), int(ticks[layout.end]))
        s.total_ns += last - first
        s.compute_ns += compute_end - compute_start
        s.dma_ns += compute_start - first + last - compute_end
        self._span(first, last)

    def add_host(self, name: str, start: int, end: int) -> None:
        self.host_ns[name] += end - start
        self._span(start, end)

    @property
    def commands(self) -> int:
        """Commands run by all the calls added."""
        return sum(s.commands for s in self.submodules.values())

    @property
    def span_ns(self) -> int:
        return 0 if self.start_ns is None else self.end_ns - self.start_ns

    def tables(self):
        """(per-device DataFrame, per-submodule DataFrame); times in milliseconds."""
        import pandas as pd

        subs = pd.DataFrame(
            [
                {"submodule": name, "device": s.device, "calls": s.calls, "commands_per_call": s.commands // max(s.calls, 1),
                 "split_commands_per_call": s.split_commands // max(s.calls, 1), "total_ms": s.total_ns / 1e6,
                 "mean_ms": s.total_ns / 1e6 / max(s.calls, 1), "compute_ms": s.compute_ns / 1e6, "dma_ms": s.dma_ns / 1e6}
                for name, s in self.submodules.items()
            ],
            columns=["submodule", "device", "calls", "commands_per_call", "split_commands_per_call", "total_ms",
                     "mean_ms", "compute_ms", "dma_ms"],
        )
        span_ms = self.span_ns / 1e6
        rows = []
        for d, torch_device in sorted(self.devices.items()):
            mine = subs[subs.device == d]
            busy = float(mine.total_ms.sum())
            host = sum(self.host_ns.values()) / 1e6 if d == 0 else 0.0
            rows.append({"device": d, "torch_device": torch_device, "submodules": ", ".join(mine.submodule),
                         "invocations": int(mine.calls.sum()), "busy_ms": busy, "compute_ms": float(mine.compute_ms.sum()),
                         "dma_ms": float(mine.dma_ms.sum()), "host_ms": host,
                         "utilisation": busy / span_ms if span_ms else 0.0})
        devices = pd.DataFrame(rows, columns=["device", "torch_device", "submodules", "invocations", "busy_ms",
                                              "compute_ms", "dma_ms", "host_ms", "utilisation"])
        return devices, subs


class Summary:
    """What `rbln-perfetto run` prints and `profile().summary()` returns."""

    def __init__(self, stats: RunStats):
        self.span_ms = stats.span_ns / 1e6
        self.devices, self.submodules = stats.tables()

    def __str__(self) -> str:
        import pandas as pd

        with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
            return (f"run span {self.span_ms:.1f} ms\n\nper device:\n{self.devices.to_string(index=False)}\n\n"
                    f"per submodule:\n{self.submodules.to_string(index=False)}")

    def __repr__(self) -> str:
        return str(self)

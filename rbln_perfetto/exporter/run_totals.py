"""Per-device and per-submodule totals of a run, accumulated while the capture streams by.

The per-device table counts and times what the `devices` report reads from the traces, in the same
units, so `rbln-perfetto run` and `rbln-perfetto summary` give the same numbers: invocations
(Workload slices), commands (Compute slices that are commands, not a split op's parent), transfers
(DMA slices), host events (Host slices); busy, compute, DMA and host milliseconds; utilisation in
percent of the run's traced span: a stretch a selection left untraced (`profile(steps=...)`) is
neither work nor idle time, as `query.trace_model` has it for the traces.
"""

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
    transfers: int = 0
    total_ns: int = 0
    compute_ns: int = 0
    dma_ns: int = 0


@dataclass
class RunTotals:
    devices: dict = field(default_factory=dict)  # logical -> torch device
    submodules: dict = field(default_factory=lambda: defaultdict(SubmoduleTotals))  # name -> SubmoduleTotals
    host_ns: dict = field(default_factory=lambda: defaultdict(int))
    host_events: int = 0
    start_ns: int | None = None
    end_ns: int | None = None
    untraced: list = field(default_factory=list)  # (start_ns, end_ns) of each untraced stretch

    def _span(self, start: int, end: int) -> None:
        self.start_ns = start if self.start_ns is None else min(self.start_ns, start)
        self.end_ns = end if self.end_ns is None else max(self.end_ns, end)

    def add_invocation(self, program, layout: TickLayout, split_commands: int, ticks) -> None:
        """One call of `program` (laid out as `layout`, with `split_commands` commands of split ops) with
        boundaries `ticks`."""
        s = self.submodules[program.submodule]
        s.device = program.device
        s.calls += 1
        s.commands += layout.commands
        s.split_commands += split_commands
        s.transfers += layout.inputs + layout.outputs
        first, compute_start, compute_end, last = (int(ticks[0]), int(ticks[layout.command(0)]),
                                                   int(ticks[layout.output(0)]), int(ticks[layout.end]))
        s.total_ns += last - first
        s.compute_ns += compute_end - compute_start
        s.dma_ns += compute_start - first + last - compute_end
        self._span(first, last)

    def add_host(self, name: str, start: int, end: int) -> None:
        self.host_ns[name] += end - start
        self.host_events += 1
        self._span(start, end)

    @property
    def commands(self) -> int:
        """Commands run by all the calls added."""
        return sum(s.commands for s in self.submodules.values())

    def add_untraced(self, start: int, end: int) -> None:
        """A stretch of the run that ran untraced (a capture `Untraced` record)."""
        self.untraced.append((start, end))

    @property
    def span_ns(self) -> int:
        return 0 if self.start_ns is None else self.end_ns - self.start_ns

    @property
    def traced_span_ns(self) -> int:
        """The span less the untraced stretches inside it (each moment once, where stretches overlap):
        what utilisation is a share of."""
        if self.start_ns is None:
            return 0
        untraced, reach = 0, self.start_ns
        for s, e in sorted(self.untraced):
            e = min(e, self.end_ns)
            untraced += max(0, e - max(s, reach))
            reach = max(reach, e)
        return self.span_ns - untraced

    def tables(self):
        """(per-device DataFrame, per-submodule DataFrame); times in milliseconds, utilisation in percent."""
        import pandas as pd

        subs = pd.DataFrame(
            [
                {"submodule": name, "device": s.device, "calls": s.calls, "commands": s.commands,
                 "commands_per_call": s.commands // max(s.calls, 1),
                 "split_commands_per_call": s.split_commands // max(s.calls, 1), "transfers": s.transfers,
                 "total_ms": s.total_ns / 1e6, "mean_ms": s.total_ns / 1e6 / max(s.calls, 1),
                 "compute_ms": s.compute_ns / 1e6, "dma_ms": s.dma_ns / 1e6}
                for name, s in self.submodules.items()
            ],
            columns=["submodule", "device", "calls", "commands", "commands_per_call", "split_commands_per_call",
                     "transfers", "total_ms", "mean_ms", "compute_ms", "dma_ms"],
        )
        span_ns = self.traced_span_ns
        rows = []
        for d, torch_device in sorted(self.devices.items()):
            mine = [s for s in self.submodules.values() if s.device == d]
            busy_ns = sum(s.total_ns for s in mine)
            root = d == 0
            rows.append({"device": d, "torch_device": torch_device,
                         "submodules": ", ".join(name for name, s in self.submodules.items() if s.device == d),
                         "invocations": sum(s.calls for s in mine), "commands": sum(s.commands for s in mine),
                         "transfers": sum(s.transfers for s in mine), "host_events": self.host_events if root else 0,
                         "busy_ms": busy_ns / 1e6, "compute_ms": sum(s.compute_ns for s in mine) / 1e6,
                         "dma_ms": sum(s.dma_ns for s in mine) / 1e6,
                         "host_ms": sum(self.host_ns.values()) / 1e6 if root else 0.0,
                         "utilisation_pct": 100.0 * busy_ns / span_ns if span_ns else 0.0})
        devices = pd.DataFrame(rows, columns=["device", "torch_device", "submodules", "invocations", "commands",
                                              "transfers", "host_events", "busy_ms", "compute_ms", "dma_ms",
                                              "host_ms", "utilisation_pct"])
        return devices, subs


class Summary:
    """What `rbln-perfetto run` prints and `profile().summary()` returns."""

    def __init__(self, stats: RunTotals):
        self.span_ms = stats.span_ns / 1e6
        self.traced_span_ms = stats.traced_span_ns / 1e6
        self.devices, self.submodules = stats.tables()

    def __str__(self) -> str:
        import pandas as pd

        with pd.option_context("display.width", 200, "display.max_columns", 20,
                               "display.float_format", "{:.3f}".format):
            untraced = self.span_ms - self.traced_span_ms
            span = (f"run span {self.span_ms:.1f} ms (utilisation_pct = busy_ms, the Workload time, as % of the span)"
                    if untraced <= 0 else
                    f"run span {self.span_ms:.1f} ms, {self.traced_span_ms:.1f} ms of it traced (utilisation_pct = "
                    f"busy_ms, the Workload time, as % of the traced span; {untraced:.1f} ms ran untraced)")
            return (f"{span}\n\nper device:\n{self.devices.to_string(index=False)}\n\n"
                    f"per submodule:\n{self.submodules.to_string(index=False)}")

    def __repr__(self) -> str:
        return str(self)

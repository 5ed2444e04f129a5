"""Capture -> Perfetto traces: one `.pb` per invocation and `aggregate.pb` of the whole run.

The capture streams through once: each invocation is assembled from its program's template,
compressed once, and the same compressed packet goes into its own file and into the aggregate.
Memory stays bounded by the programs' templates, whatever the number of invocations.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.contract import TickLayout

from .capture import Truncation, iter_records, read_info
from .errors import CaptureError, ExportError
from .host_events import host_event_packets
from .interning import Interner
from .naming import AGGREGATE_FILE_NAME, command_name_prefix, invocation_file_name
from .program_template import ProgramTemplate
from .proto_bytes import width_for
from .summary import RunStats, Summary
from .trace_file import (
    TraceFile,
    compressed_packet,
    interned_packet,
    preamble,
    remove_stale_temporaries,
)
from .tracks import TrackIds

# Files the browser UI opens comfortably; beyond this, trace_processor's HTTP mode is the way.
UI_LIMIT_BYTES = 1 << 30
COMPRESSION_THREADS = 2


def _failed(exc: OSError, path: Path) -> ExportError:
    return ExportError(f"writing {path.name} in {path.parent} failed: {exc.strerror or exc}; the files "
                       "committed before it are intact and no partial file was left")


@dataclass
class ExportResult:
    out_dir: Path
    invocation_files: list[Path] = field(default_factory=list)
    aggregate_file: Path | None = None
    truncation: Truncation | None = None
    status: str = "ok"
    slices: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    stats: RunStats = field(default_factory=RunStats)

    @property
    def command_slices(self) -> int:
        """Command slices written per copy of the trace (the invocations' commands, counted by `stats`)."""
        return self.stats.commands

    def summary(self) -> Summary:
        return Summary(self.stats)

    @property
    def too_large_for_ui(self) -> list[Path]:
        files = self.invocation_files + ([self.aggregate_file] if self.aggregate_file else [])
        return [f for f in files if f.stat().st_size > UI_LIMIT_BYTES]


def check_creatable(out_dir: Path) -> None:
    """Like `check_writable`, without creating anything: for checks made long before the first write."""
    probe = Path(os.path.abspath(out_dir))
    while not probe.exists():
        probe = probe.parent
    reason = None
    if not probe.is_dir():
        reason = "Not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        reason = "Permission denied"
    if reason:
        raise ExportError(f"output directory {out_dir} is not writable: {reason}")


def check_writable(out_dir: Path) -> None:
    """Fail before any work if `out_dir` cannot take files; clear what killed exports left there."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".rbln-perfetto-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        remove_stale_temporaries(out_dir)
    except OSError as exc:
        raise ExportError(f"output directory {out_dir} is not writable: {exc.strerror or exc}") from None


class _AggregateFile:
    """The aggregate file and its sequence's state: invocation streams are appended, host events encoded."""

    def __init__(self, path: Path, devices, boot_offset: int):
        self.file = TraceFile(path)
        self.file.write(preamble(devices, with_host=True))
        self.boot_offset = boot_offset
        self.clock: int | None = None  # the incremental clock's value after the last packet
        self.programs_interned: set[int] = set()  # capture program ids whose static strings are interned

    def invocation(self, program_id: int, template: ProgramTemplate, compressed: bytes, end_ns: int) -> None:
        if program_id not in self.programs_interned:
            self.programs_interned.add(program_id)
            self.file.write(interned_packet(template.static_interned))
        self.file.write(compressed)
        self.clock = end_ns

    def host(self, interner: Interner, tracks: TrackIds, name: str, start: int, end: int, detail: str) -> None:
        packets, self.clock = host_event_packets(interner, tracks.host(0), name, start, end, detail,
                                                 clock=self.clock, boot_offset=self.boot_offset)
        self.file.write(packets)


def export(capture: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, per_invocation: bool = True,
           aggregate: bool = True, compression_level: int | None = None) -> ExportResult:
    """Write Perfetto traces for every complete invocation in `capture`.

    `compression_level`: zlib level of the compressed packets (None: the codec's default, chosen so
    a command slice costs under 16 bytes). A capture cut short (the run was killed) exports
    everything up to its last complete record;
    `ExportResult.truncation` says where it stopped. Raises `CaptureError` (with the byte offset)
    for files that are not captures or are corrupt, `ExportError` when `out_dir` is not writable.
    """
    started = time.perf_counter()
    capture = Path(capture)
    if not capture.is_file():
        raise CaptureError(capture, 0, "is a directory, not a capture file" if capture.is_dir() else "no such capture file")
    info = read_info(capture)
    out = Path(out_dir) if out_dir is not None else capture.parent
    check_writable(out)
    result = ExportResult(out, truncation=info.truncation,
                          status=info.end.status if info.end else ("truncated" if info.truncation else "incomplete"))
    devices: dict[int, tuple[int, str, int]] = {}
    baseline: dict[tuple[int, int], int] = {}  # (pipeline, device) -> resident weight bytes
    for pipe in info.pipelines:
        for d in pipe.devices:
            devices.setdefault(d.logical, (d.logical, d.torch_device, d.capacity_bytes))
        for p in pipe.placement:
            key = (pipe.pipeline_id, p.device)
            baseline[key] = baseline.get(key, 0) + p.weight_bytes
    for prog in info.programs.values():
        devices.setdefault(prog.device, (prog.device, prog.torch_device, 0))
    result.stats.devices = {d: t for d, (_, t, _) in devices.items()}
    boot_offset = info.header.clock.boottime_ns - info.header.clock.monotonic_ns

    interner = Interner()
    tracks = TrackIds()
    templates: dict[tuple[int, int, int], ProgramTemplate] = {}
    try:
        agg = _AggregateFile(out / AGGREGATE_FILE_NAME, sorted(devices.values()), boot_offset) if aggregate else None
    except OSError as exc:
        raise _failed(exc, out / AGGREGATE_FILE_NAME) from exc
    # Compression runs on worker threads (zlib releases the GIL) while this thread assembles the
    # next invocation; `pending` keeps every output in capture order.
    pool = ThreadPoolExecutor(max_workers=COMPRESSION_THREADS)
    pending: deque = deque()

    def write(item) -> None:
        kind, payload = item
        if kind == "host":
            agg.host(interner, tracks, *payload)
            return
        future, inv, program, template, ticks = payload
        compressed = future.result()
        if per_invocation:
            path = out / invocation_file_name(inv.sequence_index, program.submodule, inv.call_index)
            try:
                f = TraceFile(path)
            except OSError as exc:
                raise _failed(exc, path) from exc
            try:
                f.write(preamble([devices[program.device]], with_host=False))
                f.write(interned_packet(template.static_interned))
                f.write(compressed)
                result.bytes_written += f.bytes_written
                result.invocation_files.append(f.commit())
            except BaseException as exc:
                f.discard()
                if isinstance(exc, OSError):
                    raise _failed(exc, path) from exc
                raise
        if agg is not None:
            agg.invocation(inv.program_id, template, compressed, int(ticks[template.layout.end]))

    try:
        for offset, record in iter_records(capture):
            kind = record.WhichOneof("kind")
            if kind == "host":
                h = record.host
                result.stats.add_host(h.name, h.start_ns, h.end_ns)
                if agg is not None:
                    pending.append(("host", (h.name, h.start_ns, h.end_ns, h.detail)))
            elif kind == "invocation":
                inv = record.invocation
                program = info.programs[inv.program_id]
                durations = np.asarray(inv.durations_ns, dtype=np.int64)
                if len(durations) + 1 != TickLayout.of(program).num_ticks:
                    raise CaptureError(capture, offset, f"invocation {inv.sequence_index} has {len(durations) + 1} "
                                                        f"timestamps for a program of {len(program.commands)} commands")
                if (durations < 0).any():
                    raise CaptureError(capture, offset, f"invocation {inv.sequence_index} has negative durations")
                ticks = np.concatenate(([inv.start_ns], inv.start_ns + np.cumsum(durations)))
                # Four bytes hold gaps up to 268 ms, so one template per program serves nearly every call.
                width = max(4, width_for(int(durations.max(initial=0))))
                key = (inv.program_id, width, len(command_name_prefix(inv.sequence_index)))
                template = templates.get(key)
                if template is None:
                    template = templates[key] = ProgramTemplate(
                        program, tracks, interner, baseline.get((program.pipeline_id, program.device), program.weight_bytes),
                        *key[1:])
                name_iid = interner.reserve_names(1)
                stream = template.names_packet(inv.call_index, name_iid) + template.assemble(
                    ticks, inv.sequence_index, inv.call_index, name_iid, boot_offset)
                future = pool.submit(compressed_packet, stream, compression_level)
                pending.append(("invocation", (future, inv, program, template, ticks)))
                result.stats.add_invocation(inv.program_id, program, ticks)
                result.slices += template.n_slices
            while len(pending) > COMPRESSION_THREADS + 1 or (pending and pending[0][0] == "host"):
                write(pending.popleft())
        while pending:
            write(pending.popleft())
        if agg is not None:
            result.bytes_written += agg.file.bytes_written
            result.aggregate_file = agg.file.commit()
    except ExportError:
        if agg is not None:
            agg.file.discard()
        raise
    except OSError as exc:
        if agg is not None:
            agg.file.discard()
        raise _failed(exc, out / AGGREGATE_FILE_NAME) from exc
    except BaseException:
        if agg is not None:
            agg.file.discard()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    result.seconds = time.perf_counter() - started
    return result

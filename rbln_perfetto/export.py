"""Capture -> Perfetto traces: one `.pb` per invocation and `aggregate.pb` of the whole run.

The capture streams through once: each invocation is assembled from its program's template,
compressed once, and the same compressed packet goes into its own file and into the aggregate.
Memory stays bounded by the programs' templates, whatever the number of invocations.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .capture import CaptureError, Truncation, iter_records, read_info
from .invocation_stream import ANNOTATION_IID, Interner, ProgramTemplate, interned_entry
from .proto_bytes import (
    CLOCK_BOOTTIME,
    SEQ_NEEDS_STATE,
    SEQUENCE_ID,
    SLICE_BEGIN,
    SLICE_END,
    F,
    f_bytes,
    f_varint,
    width_for,
)
from .summary import RunStats, Summary
from .trace_file import (
    TraceFile,
    compressed_packet,
    interned_packet,
    preamble,
    remove_stale_temporaries,
)
from .tracks import TrackIds

AGGREGATE = "aggregate.pb"
# Files the browser UI opens comfortably; beyond this, trace_processor's HTTP mode is the way.
UI_LIMIT_BYTES = 1 << 30
COMPRESSION_THREADS = 2


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def invocation_file_name(sequence_index: int, submodule: str, call_index: int) -> str:
    """`ls` order is run order: 0006_transformer_0.pb. Characters a file name cannot hold become `_`."""
    return f"{sequence_index:04d}_{_UNSAFE.sub('_', submodule)[:64]}_{call_index}.pb"


class ExportError(OSError):
    """The output cannot be written; nothing already written was changed."""


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
    command_slices: int = 0
    slices: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    stats: RunStats = field(default_factory=RunStats)

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


class _Aggregate:
    """The aggregate file's sequence: host events are encoded here, invocation streams appended."""

    def __init__(self, path: Path, devices, boot_offset: int):
        self.file = TraceFile(path)
        self.file.write(preamble(devices, with_host=True))
        self.boot_offset = boot_offset
        self.last_ts: int | None = None  # the incremental clock's value after the last packet
        self.programs_seen: set[int] = set()
        self.host_names: dict[str, int] = {}

    def invocation(self, program_id: int, template: ProgramTemplate, compressed: bytes, end_ns: int) -> None:
        if program_id not in self.programs_seen:
            self.programs_seen.add(program_id)
            self.file.write(interned_packet(template.static_interned))
        self.file.write(compressed)
        self.last_ts = end_ns

    def host(self, interner: Interner, tracks: TrackIds, name: str, start: int, end: int, detail: str) -> None:
        interned = b""
        if name not in interner.names:
            interned += interned_entry(F.INTERNED_EVENT_NAMES, interner.name(name), name.encode(), F.INTERNED_NAME)
        args = b""
        if detail:
            if detail not in interner.strings:
                interned += interned_entry(F.INTERNED_STRINGS, interner.string(detail), detail.encode(), F.INTERNED_STRING)
            body = f_varint(F.ANNOTATION_NAME_IID, ANNOTATION_IID["detail"]) + f_varint(
                F.ANNOTATION_STRING_IID, interner.string(detail))
            args = f_bytes(F.DEBUG_ANNOTATIONS, body)
        track = tracks.host(0)
        begin = f_varint(F.EVENT_TYPE, SLICE_BEGIN) + f_varint(F.TRACK_UUID, track) + f_varint(F.NAME_IID, interner.name(name)) + args
        end_ev = f_varint(F.EVENT_TYPE, SLICE_END) + f_varint(F.TRACK_UUID, track)
        if self.last_ts is not None and start >= self.last_ts:
            stamps = [f_varint(F.TIMESTAMP, start - self.last_ts), f_varint(F.TIMESTAMP, end - start)]
            self.last_ts = end
        else:
            # Before anything on the incremental clock, or out of order: absolute BOOTTIME stamps.
            clock = f_varint(F.TIMESTAMP_CLOCK_ID, CLOCK_BOOTTIME)
            stamps = [f_varint(F.TIMESTAMP, start + self.boot_offset) + clock,
                      f_varint(F.TIMESTAMP, end + self.boot_offset) + clock]
        out = b""
        for stamp, event, extra in ((stamps[0], begin, interned), (stamps[1], end_ev, b"")):
            body = (stamp + f_varint(F.SEQUENCE_ID, SEQUENCE_ID) + f_bytes(F.TRACK_EVENT, event)
                    + (f_bytes(F.INTERNED_DATA, extra) if extra else b"") + f_varint(F.SEQUENCE_FLAGS, SEQ_NEEDS_STATE))
            out += f_bytes(F.TRACE_PACKET, body)
        self.file.write(out)


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
        agg = _Aggregate(out / AGGREGATE, sorted(devices.values()), boot_offset) if aggregate else None
    except OSError as exc:
        raise _failed(exc, out / AGGREGATE) from exc
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
            agg.invocation(inv.program_id, template, compressed, int(ticks[-1]))

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
                if len(durations) + 1 != len(program.inputs) + len(program.commands) + len(program.outputs) + 1:
                    raise CaptureError(capture, offset, f"invocation {inv.sequence_index} has {len(durations) + 1} "
                                                        f"timestamps for a program of {len(program.commands)} commands")
                if (durations < 0).any():
                    raise CaptureError(capture, offset, f"invocation {inv.sequence_index} has negative durations")
                ticks = np.concatenate(([inv.start_ns], inv.start_ns + np.cumsum(durations)))
                # Four bytes hold gaps up to 268 ms, so one template per program serves nearly every call.
                width = max(4, width_for(int(durations.max(initial=0))))
                key = (inv.program_id, width, len(str(inv.sequence_index)))
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
                result.stats.add_invocation(program, ticks)
                result.command_slices += len(program.commands)
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
        raise _failed(exc, out / AGGREGATE) from exc
    except BaseException:
        if agg is not None:
            agg.file.discard()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    result.seconds = time.perf_counter() - started
    return result

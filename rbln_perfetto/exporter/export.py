"""Capture -> Perfetto traces: one `.pb` per invocation and `aggregate.pb` of the whole run.

The capture streams through once: each invocation is assembled from its program's template,
compressed once, and the same compressed packet goes into its own file and into the aggregate.
Memory stays bounded by the programs' templates, whatever the number of invocations; templates
outlive the export (`template_cache`), so exporting a program again costs no template building.
Files are committed in capture order while their fsyncs run together on worker threads
(`trace_file.CommitQueue`). Every file also carries the run's provenance
(`provenance.TraceProvenance`): system info, its own trace UUID, the Run slice.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.contract import TickLayout

from ..recorder.capture import Truncation, iter_records, read_info
from ..errors import CaptureError, ExportError
from .host_events import host_event_packets, range_packets, ranges_track_packet, transfer_packets, untraced_packets
from .interning import Interner
from ..naming import AGGREGATE_FILE_NAME, command_name_prefix, invocation_file_name
from .program_template import ProgramTemplate, measured_memory_packets
from .provenance import TraceProvenance
from ..progress import progress_bar
from ..proto_bytes import width_for
from ..recorder.run_directory import claim_run_directory, run_identity
from .run_totals import RunTotals, Summary
from .template_cache import TEMPLATES
from .trace_file import (
    CommitQueue,
    TraceFile,
    compressed_packet,
    interned_packet,
    preamble,
    remove_stale_temporaries,
)
from .tracks import DeviceTrack, TrackIds
from .worker_threads import COMPRESSION_THREADS, acquire_pools, release_pools

# Files the browser UI opens comfortably; beyond this, trace_processor's HTTP mode is the way.
UI_LIMIT_BYTES = 1 << 30


@dataclass
class ExportResult:
    out_dir: Path
    invocation_files: list[Path] = field(default_factory=list)
    aggregate_file: Path | None = None
    truncation: Truncation | None = None
    status: str = "ok"
    slices: int = 0  # the slices aggregate.pb holds (`select count(*) from slice` on it), written or not
    bytes_written: int = 0
    seconds: float = 0.0
    stats: RunTotals = field(default_factory=RunTotals)

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
    """The aggregate file and its sequence's state: invocation streams are appended, host events and
    user ranges encoded (the Ranges track only when the capture holds ranges)."""

    def __init__(self, path: Path, devices, boot_offset: int, file_start: bytes, with_ranges: bool = False):
        ranges = [ranges_track_packet(with_device_0=any(d[0] == 0 for d in devices))] if with_ranges else []
        self.file = TraceFile.started(path, [preamble(tuple(devices), with_host=True), *ranges, file_start])
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

    def range(self, user_range) -> None:
        packets, self.clock = range_packets(user_range, clock=self.clock, boot_offset=self.boot_offset)
        self.file.write(packets)

    def untraced(self, tracks: TrackIds, stretch) -> None:
        packets, self.clock = untraced_packets(tracks, stretch, clock=self.clock, boot_offset=self.boot_offset)
        self.file.write(packets)

    def transfer(self, tracks: TrackIds, transfer) -> None:
        packets, self.clock = transfer_packets(tracks, transfer, clock=self.clock, boot_offset=self.boot_offset)
        self.file.write(packets)


def _device_tracks(info) -> tuple[dict[int, DeviceTrack], dict[tuple[int, int], int]]:
    """The capture's devices, by logical index, and each (pipeline, device)'s resident weight bytes."""
    host_cpus = info.header.host.usable_cpus if info.header.HasField("host") else 0
    devices: dict[int, DeviceTrack] = {}
    baselines: dict[tuple[int, int], int] = {}
    for pipe in info.pipelines:
        for d in pipe.devices:
            devices.setdefault(d.logical, DeviceTrack(d.logical, d.torch_device, d.capacity_bytes, d.timing,
                                                      d.logical in info.measured_devices, host_cpus))
        for p in pipe.placement:
            key = (pipe.pipeline_id, p.device)
            baselines[key] = baselines.get(key, 0) + p.weight_bytes
    for prog in info.programs.values():
        devices.setdefault(prog.device, DeviceTrack(prog.device, prog.torch_device, 0,
                                                    measured_memory=prog.device in info.measured_devices))
    return devices, baselines


class _Export:
    """One export as the capture streams through it: records in, invocations assembled and compressed,
    files written and committed in capture order.

    Compression runs on worker threads (zlib releases the GIL) while this thread assembles the next
    invocation; `pending` keeps every output in capture order.
    """

    def __init__(self, capture: Path, info, out: Path, *, per_invocation: bool, compression_level: int | None):
        self.capture = capture
        self.info = info
        self.out = out
        self.per_invocation = per_invocation
        self.compression_level = compression_level
        self.result = ExportResult(out, truncation=info.truncation, status=info.status)
        self.devices, self.baselines = _device_tracks(info)
        self.result.stats.devices = {d: t.torch_device for d, t in self.devices.items()}
        self.boot_offset = info.header.clock.boottime_ns - info.header.clock.monotonic_ns
        self.provenance = TraceProvenance(info, run_identity(info.header))
        # The budget each pipeline was compiled for: a command over it says by how much.
        self.budgets = {pipe.pipeline_id: json.loads(pipe.rbln_config_json or "{}").get("command_budget") or 0
                        for pipe in info.pipelines}
        self.interner = Interner()
        self.tracks = TrackIds()
        self.templates: dict[tuple[int, int, int, bool], ProgramTemplate] = {}
        self.pending: deque = deque()
        self.agg: _AggregateFile | None = None
        self.pool, syncs = acquire_pools()  # (last: the export releases them when it ends)
        self.commits = CommitQueue(syncs)

    def open_aggregate(self) -> None:
        self.agg = _AggregateFile(self.out / AGGREGATE_FILE_NAME, sorted(self.devices.values()), self.boot_offset,
                                  self.provenance.file_start(AGGREGATE_FILE_NAME), self.info.ranges > 0)

    def read(self, bar) -> None:
        """Every record of the capture, each written as soon as the outputs before it are."""
        shown = 0
        # What read_info took in already, and the clock exchanges only merge reads, are not parsed again.
        for offset, record in iter_records(self.capture, skip={"header", "pipeline", "program", "end", "clock_sync"}):
            kind = record.WhichOneof("kind")
            if kind == "host":
                h = record.host
                self.result.stats.add_host(h.name, h.start_ns, h.end_ns)
                if self.agg is not None:
                    self.pending.append(("host", (h.name, h.start_ns, h.end_ns, h.detail)))
            elif kind in ("range", "untraced", "transfer"):
                if kind == "untraced":  # (not idle: the run's utilisation is a share of its traced time)
                    self.result.stats.add_untraced(record.untraced.start_ns, record.untraced.end_ns)
                if self.agg is not None:
                    self.pending.append((kind, getattr(record, kind)))
            elif kind == "invocation":
                self._invocation(offset, record.invocation)
            bar.update(offset - shown)
            shown = offset
            while len(self.pending) > COMPRESSION_THREADS + 1 or (self.pending and self.pending[0][0] != "invocation"):
                self._write(self.pending.popleft())
        while self.pending:
            self._write(self.pending.popleft())

    def _ticks(self, offset: int, inv, program) -> np.ndarray:
        """The invocation's boundaries (CLOCK_MONOTONIC ns), checked against its program."""
        durations = np.asarray(inv.durations_ns, dtype=np.int64)
        if len(durations) + 1 != TickLayout.of(program).num_ticks:
            raise CaptureError(self.capture, offset, f"invocation {inv.sequence_index} has {len(durations) + 1} "
                                                     f"timestamps for a program of {len(program.commands)} commands")
        if (durations < 0).any():
            raise CaptureError(self.capture, offset, f"invocation {inv.sequence_index} has negative durations")
        return np.concatenate(([inv.start_ns], inv.start_ns + np.cumsum(durations)))

    def _template(self, inv, program, ticks: np.ndarray) -> ProgramTemplate:
        """The template that serves this invocation: its program's, for its gaps, index digits and step."""
        # Four bytes hold gaps up to 268 ms, so one template per program serves nearly every call.
        width = max(4, width_for(int(np.diff(ticks).max(initial=0))))
        has_step = inv.HasField("step")  # a denoising step: its Workload slice says which
        key = (inv.program_id, width, len(command_name_prefix(inv.sequence_index)), has_step)
        template = self.templates.get(key)
        if template is None:
            template = self.templates[key] = TEMPLATES.get(
                program, self.info.program_records[inv.program_id], self.interner,
                self.baselines.get((program.pipeline_id, program.device), program.weight_bytes), width, key[2],
                command_budget=self.budgets.get(program.pipeline_id, 0), with_step=has_step)
        return template

    def _invocation(self, offset: int, inv) -> None:
        """Assemble one invocation's packets and queue their compression."""
        program = self.info.programs[inv.program_id]
        ticks = self._ticks(offset, inv, program)
        template = self._template(inv, program, ticks)
        name_iid = self.interner.reserve_names(1)
        stream = template.names_packet(inv.call_index, name_iid) + template.assemble(
            ticks, inv.sequence_index, inv.call_index, name_iid, self.boot_offset, inv.step)
        if inv.memory_allocated:
            stream += measured_memory_packets(self.tracks.measured_memory(program.device), ticks[0],
                                              ticks[template.layout.end], inv.memory_allocated, self.boot_offset)
        future = self.pool.submit(compressed_packet, stream, self.compression_level)
        self.pending.append(("invocation", (future, stream, inv, program, template, ticks)))
        self.result.stats.add_invocation(program, template.layout, template.split_commands, ticks)
        self.result.slices += template.n_slices

    def _write(self, item) -> None:
        kind, payload = item
        if kind == "host":
            self.agg.host(self.interner, self.tracks, *payload)
        elif kind == "range":
            self.agg.range(payload)
        elif kind == "untraced":
            self.agg.untraced(self.tracks, payload)
        elif kind == "transfer":
            self.agg.transfer(self.tracks, payload)
        else:
            self._write_invocation(*payload)

    def _write_invocation(self, future, stream: bytes, inv, program, template: ProgramTemplate, ticks) -> None:
        """One invocation's file, and its packets in the aggregate."""
        # A compression no worker has started yet runs here rather than being waited for.
        compressed = compressed_packet(stream, self.compression_level) if future.cancel() else future.result()
        if self.per_invocation:
            path = self.out / invocation_file_name(inv.sequence_index, program.submodule, inv.call_index)
            f = TraceFile.started(path, (
                preamble((self.devices[program.device],), with_host=False), self.provenance.file_start(path.name),
                interned_packet(template.static_interned), compressed,
                self.provenance.run_slice(int(ticks[0]), int(ticks[template.layout.end]))), queue=self.commits)
            self.result.bytes_written += f.bytes_written
            self.result.invocation_files += self.commits.commit_ready()
        if self.agg is not None:
            self.agg.invocation(inv.program_id, template, compressed, int(ticks[template.layout.end]))

    def finish(self) -> None:
        """Close the aggregate and commit every file."""
        result, agg = self.result, self.agg
        # The aggregate also holds the host events, the user ranges, the untraced stretches and the Run slice.
        result.slices += result.stats.host_events + self.info.ranges + self.info.untraced + self.info.transfers + 1
        if agg is not None:
            agg.file.write(self.provenance.run_slice(result.stats.start_ns, result.stats.end_ns))
            result.bytes_written += agg.file.bytes_written
            self.commits.put(agg.file)  # synced beside the last invocation files, renamed after them
        committed = self.commits.commit_ready(wait_all=True)
        if agg is not None:
            result.aggregate_file = committed.pop()
        result.invocation_files += committed

    def abandon(self, failure: BaseException) -> None:
        """After `failure`: keep what `CommitQueue.settle` keeps, remove the aggregate's temporary."""
        try:
            self.commits.settle(failure)
        finally:
            if self.agg is not None:
                self.agg.file.discard()

    def cancel_pending(self) -> None:
        for kind, payload in self.pending:
            if kind == "invocation":
                payload[0].cancel()


def export(capture: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, per_invocation: bool = True,
           aggregate: bool = True, compression_level: int | None = None, overwrite: bool = False) -> ExportResult:
    """Write Perfetto traces for every complete invocation in `capture`.

    `compression_level`: zlib level of the compressed packets (None: the codec's default, chosen so
    a command slice costs under 16 bytes). A capture cut short (the run was killed) exports
    everything up to its last complete record;
    `ExportResult.truncation` says where it stopped. Raises `CaptureError` (with the byte offset)
    for files that are not captures or are corrupt, `ExportError` when `out_dir` is not writable,
    `OutputExistsError` when it holds another run's files (`overwrite` removes them first).
    """
    started = time.perf_counter()
    capture = Path(capture)
    if not capture.is_file():
        raise CaptureError(capture, 0, "is a directory, not a capture file" if capture.is_dir() else "no such capture file")
    info = read_info(capture)
    out = Path(out_dir) if out_dir is not None else capture.parent
    check_writable(out)
    claim_run_directory(out, run_identity(info.header), overwrite=overwrite, keep=capture)
    # Bytes of the capture read so far: a bar on a terminal once the export has run a second.
    bar = progress_bar(capture.stat().st_size, f"exporting {capture.name}")
    job = None
    try:  # (right before the main loop's guard, which discards it)
        job = _Export(capture, info, out, per_invocation=per_invocation, compression_level=compression_level)
        if aggregate:
            job.open_aggregate()
    except BaseException:
        bar.close()
        if job is not None:  # (it took the pools last thing)
            release_pools()
        raise
    try:
        job.read(bar)
        job.finish()
    except BaseException as exc:
        job.abandon(exc)
        if isinstance(exc, OSError) and not isinstance(exc, ExportError):  # (the files' own writes name them)
            raise ExportError(f"exporting {capture} failed: {exc.strerror or exc}; the files committed before "
                              "it are intact and no partial file was left") from exc
        raise
    finally:
        job.cancel_pending()
        bar.close()
        release_pools()
    job.result.seconds = time.perf_counter() - started
    return job.result

"""The capture file: what a profiled run recorded, streamed to disk as it happens.

Format: the magic `RBLNCAP1`, then `Record` messages (proto/rbln_capture.proto), each preceded by
its length as a varint. The writer flushes to the OS at every invocation end, so a process killed
mid-run leaves a prefix from which every completed invocation can be read back; the reader names
the byte offset of whatever it cannot read.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Set
from typing import BinaryIO, Iterator

from google.protobuf.message import DecodeError

from pipeline.contract import PipelineInfo, ProgramInfo, RankTransfer, timing_method

from .. import rbln_capture_pb2 as pb
from ..errors import CaptureError
from ..naming import CAPTURE_MAGIC
from .host_info import host_info
from ..proto_bytes import MAX_VARINT_BYTES, VarintError, read_varint, varint

MAGIC = CAPTURE_MAGIC
FORMAT_VERSION = 1
# A record longer than this is not one we wrote: the length prefix is corrupt.
MAX_RECORD_BYTES = 1 << 30


def clock_now() -> pb.Clock:
    """CLOCK_MONOTONIC (the capture's clock) with BOOTTIME and the wall clock read beside it."""
    mono = time.monotonic_ns()
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else mono
    return pb.Clock(monotonic_ns=mono, boottime_ns=boot, realtime_ns=time.time_ns())


def _runtime_record(info: PipelineInfo) -> pb.RuntimeInfo | None:
    """The pipeline's torch runtime as it is now (None when the pipeline does not say)."""
    if info.runtime is None:
        return None
    r = info.runtime()
    return pb.RuntimeInfo(torch_version=r.torch_version, intra_op_threads=r.intra_op_threads,
                          weights_digest=r.weights_digest, slowdown=r.slowdown)


def _profile_record(device) -> pb.DeviceProfile | None:
    """The device's profile (measured or given; None when the pipeline does not say)."""
    if getattr(device, "profile", None) is None:
        return None
    p = device.profile()
    return pb.DeviceProfile(peak_flops_per_s=p.peak_flops_per_s, mem_bandwidth_bytes_per_s=p.mem_bandwidth_bytes_per_s,
                            capacity_bytes=p.capacity_bytes, dtype=p.dtype, source=p.source, label=p.label)


class CaptureWriter:
    """Appends records to a capture file: a pipeline's placement and programs once, then every call."""

    def __init__(self, path: str | os.PathLike, run_id: str, tool_version: str = ""):
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "xb")
        self._file.write(MAGIC)
        self._next_sequence = 0  # submodule calls so far, profiled or not (see `skip`)
        self._calls: dict[str, int] = {}
        # Keyed by the PipelineInfo itself (hashed by identity, kept alive here, so never confused
        # with a later one), then by (pipeline id, submodule).
        self._pipelines: dict[PipelineInfo, int] = {}
        self._programs: dict[tuple[int, str], int] = {}
        self._submodule_of: dict[int, str] = {}
        self._write(pb.Record(header=pb.RunHeader(
            format_version=FORMAT_VERSION, run_id=run_id, clock=clock_now(), hostname=socket.gethostname(),
            pid=os.getpid(), tool_version=tool_version, host=host_info(),
        )))
        self._file.flush()

    def _write(self, record: pb.Record) -> None:
        data = record.SerializeToString()
        # One write per record: the buffered file's lock then keeps a range recorded on another
        # thread from landing inside the pipeline thread's record.
        self._file.write(varint(len(data)) + data)

    def pipeline(self, info: PipelineInfo, profiled: Set[str]) -> int:
        """Record a pipeline's placement once per capture; returns its id."""
        known = self._pipelines.get(info)
        if known is not None:
            return known
        pipeline_id = self._pipelines[info] = len(self._pipelines)
        self._write(pb.Record(pipeline=pb.Pipeline(
            pipeline_id=pipeline_id,
            model=info.model,
            rbln_config_json=json.dumps(info.rbln_config, sort_keys=True),
            devices=[pb.Device(logical=d.logical, torch_device=d.torch_device, capacity_bytes=d.capacity_bytes,
                               timing=timing_method(d.torch_device), profile=_profile_record(d))
                     for d in info.devices],
            placement=[pb.Placement(submodule=p.submodule, device=p.device, weight_bytes=p.weight_bytes,
                                    activation_bytes=info.activation_bytes.get(p.submodule, 0),
                                    profiled=p.submodule in profiled)
                       for p in info.programs],
            runtime=_runtime_record(info),
            rank=info.rank,
            world_size=info.world_size if info.world_size > 1 else 0,
        )))
        self._file.flush()
        return pipeline_id

    def program(self, info: ProgramInfo, pipeline_id: int = 0) -> int:
        """Record one compiled program of pipeline `pipeline_id` once per capture; returns its id."""
        key = (pipeline_id, info.submodule)
        known = self._programs.get(key)
        if known is not None:
            return known
        program_id = self._programs[key] = len(self._programs)
        self._submodule_of[program_id] = info.submodule

        def transfer(t):
            return pb.Transfer(name=t.name, shape=list(t.shape), dtype=t.dtype, bytes=t.bytes, command=t.command)

        self._write(pb.Record(program=pb.Program(
            program_id=program_id, pipeline_id=pipeline_id, submodule=info.submodule, device=info.device,
            torch_device=info.torch_device, weight_bytes=info.weight_bytes,
            inputs=[transfer(t) for t in info.inputs],
            commands=[pb.Command(layer=c.layer, op=c.op, command_index=c.command_index,
                                 command_count=c.command_count, shapes=c.shapes, bytes=c.bytes, flops=c.flops,
                                 live_bytes=c.live_bytes) for c in info.commands],
            outputs=[transfer(t) for t in info.outputs],
        )))
        return program_id

    def invocation(self, program_id: int, ticks: list[int], memory_allocated=(), step: int | None = None) -> None:
        """One call of program `program_id`: its timestamps, and on CUDA the measured device memory at its
        first and last tick (`pipeline.contract.Sink.invocation`); `step`: its denoising step, if it is one."""
        submodule = self._submodule_of[program_id]
        call_index = self._calls.get(submodule, 0)
        self._calls[submodule] = call_index + 1
        start = ticks[0]
        durations = [b - a for a, b in zip(ticks, ticks[1:])]
        self._write(pb.Record(invocation=pb.Invocation(
            program_id=program_id, sequence_index=self._next_sequence, call_index=call_index,
            start_ns=start, durations_ns=durations, memory_allocated=list(memory_allocated), step=step,
        )))
        self._next_sequence += 1
        self._file.flush()

    def skip(self, submodule: str) -> None:
        """A submodule call that is not traced: nothing is written, but it takes its sequence index and
        its place among `submodule`'s calls, so the traced calls keep the numbers of a full run."""
        self._calls[submodule] = self._calls.get(submodule, 0) + 1
        self._next_sequence += 1

    def elsewhere(self, calls: int) -> None:
        """`calls` submodule calls that ran in other processes (their invocations are in those processes'
        captures): they take their sequence indices, so this capture's calls keep the run's numbers."""
        self._next_sequence += calls

    def transfer(self, t: RankTransfer) -> None:
        """Tensors of a submodule call that crossed processes (`pipeline.contract.RankTransfer`)."""
        self._write(pb.Record(transfer=pb.RankTransfer(
            submodule=t.submodule, direction=t.direction, peer=t.peer, device=t.device, tensors=list(t.tensors),
            bytes=t.bytes, start_ns=t.start_ns, end_ns=t.end_ns, flow=t.flow)))

    def clock_sync(self, label: str, rank: int, offset_ns: int, uncertainty_ns: int, round_trip_ns: int) -> None:
        """This process's clock against rank 0's, as measured (`pipeline.ranks.exchange_clocks`)."""
        self._write(pb.Record(clock_sync=pb.ClockSync(label=label, rank=rank, offset_ns=offset_ns,
                                                      uncertainty_ns=uncertainty_ns, round_trip_ns=round_trip_ns)))
        self._file.flush()

    @property
    def next_sequence_index(self) -> int:
        """The sequence index the next submodule call takes."""
        return self._next_sequence

    def untraced(self, unit: str, first: int, last: int, device: int, start_ns: int, end_ns: int,
                 first_sequence_index: int, end_sequence_index: int) -> None:
        """A stretch of the run that ran but was not traced: `unit` ("steps" or "calls") `first`..`last`,
        from `start_ns` to `end_ns`, holding the submodule calls first_sequence_index..end_sequence_index - 1."""
        self._write(pb.Record(untraced=pb.Untraced(
            unit=unit, first=first, last=last, device=device, start_ns=start_ns, end_ns=end_ns,
            first_sequence_index=first_sequence_index, invocations=end_sequence_index - first_sequence_index)))

    def host(self, name: str, start_ns: int, end_ns: int, detail: str = "") -> None:
        self._write(pb.Record(host=pb.HostEvent(name=name, start_ns=start_ns, end_ns=end_ns, detail=detail)))

    def range(self, name: str, start_ns: int, end_ns: int, args: list[pb.RangeArg]) -> None:
        """A user range (`rbln_perfetto.range`) that has ended; ignored once the capture is closed
        (a range that outlived its profiled block)."""
        if not self._file.closed:
            self._write(pb.Record(range=pb.UserRange(name=name, start_ns=start_ns, end_ns=end_ns, args=args)))

    def close(self, status: str = "ok", error: str = "") -> None:
        if self._file.closed:
            return
        self._write(pb.Record(end=pb.RunEnd(end_ns=time.monotonic_ns(), status=status, error=error)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


# ------------------------------------------------------------------------------------- reading


@dataclass
class Truncation:
    """Where a capture stops being readable, and why: the record at `offset` is incomplete."""

    offset: int
    reason: str


@dataclass
class CaptureInfo:
    """Everything in a capture except the invocations, which stream (see `iter_records`)."""

    path: Path
    header: pb.RunHeader
    pipelines: list[pb.Pipeline] = field(default_factory=list)
    programs: dict[int, pb.Program] = field(default_factory=dict)
    program_records: dict[int, bytes] = field(default_factory=dict)  # the bytes of each program's record
    end: pb.RunEnd | None = None
    truncation: Truncation | None = None
    invocations: int = 0
    host_events: int = 0
    ranges: int = 0
    untraced: int = 0  # stretches that ran untraced (`profile(steps=..., calls=...)`)
    transfers: int = 0  # tensors sent to or received from other processes (a run split across ranks)
    clock_syncs: list[pb.ClockSync] = field(default_factory=list)
    measured_devices: set[int] = field(default_factory=set)  # devices with measured memory (CUDA)

    @property
    def rank(self) -> int:
        """The rank of the process that wrote it (0 when not split across processes)."""
        return self.pipelines[0].rank if self.pipelines else 0

    @property
    def status(self) -> str:
        """How the run ended: its RunEnd status, else "truncated" (cut inside a record) or "incomplete"."""
        if self.end is not None:
            return self.end.status
        return "truncated" if self.truncation else "incomplete"


def iter_records(path: str | os.PathLike, *, strict: bool = False,
                 skip: Set[str] = frozenset()) -> Iterator[tuple[int, pb.Record]]:
    """Yield (offset, record) in file order.

    A file that is not a capture, or a record that does not parse, raises `CaptureError` with the
    offset. A capture that ends inside a record (the writer was killed) stops cleanly and the
    generator returns a `Truncation` (raised as `CaptureError` when `strict`). Records of a kind in
    `skip` (as `WhichOneof("kind")` names it) are passed over without being parsed.
    """
    records = _records(path, strict, skip)
    while True:
        try:
            offset, _, record = next(records)
        except StopIteration as stop:
            return stop.value
        yield offset, record


# The Record field that a record's first tag names, for `skip`: a record is one field of the oneof.
_KIND_OF_TAG = {(f.number << 3) | 2: f.name for f in pb.Record.DESCRIPTOR.oneofs_by_name["kind"].fields}


def _skipped(data: bytes, skip: Set[str]) -> bool:
    """Whether record `data` is one field of a kind in `skip`, and nothing else."""
    kind = _KIND_OF_TAG.get(data[0]) if data else None
    if kind not in skip:
        return False
    try:
        length, pos = read_varint(data, 1)
    except VarintError:
        return False
    return pos + length == len(data)


def _records(path: str | os.PathLike, strict: bool, skip: Set[str]) -> Iterator[tuple[int, bytes, pb.Record]]:
    """`iter_records`, with each record's bytes: (offset, bytes, record)."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            what = "empty file" if not magic else f"starts with {magic!r}, not {MAGIC!r}"
            if magic[:1] == b"\x0a":
                what += "; it looks like a Perfetto trace: export takes the capture.rblncap of a profiled run"
            raise CaptureError(path, 0, f"not an rbln-perfetto capture ({what})")
        offset = len(MAGIC)
        while True:
            head = f.read(MAX_VARINT_BYTES)
            if not head:
                return None
            try:
                length, nread = read_varint(head)
            except VarintError as exc:
                if exc.cut_short:
                    return _truncated(path, offset, "length prefix cut short", strict)
                raise CaptureError(path, offset, "corrupt record length") from None
            f.seek(offset + nread)
            if length > MAX_RECORD_BYTES:
                raise CaptureError(path, offset, f"corrupt record length {length}")
            data = f.read(length)
            if len(data) < length:
                return _truncated(path, offset, f"record of {length} bytes cut short after {len(data)}", strict)
            if not (skip and _skipped(data, skip)):
                record = pb.Record()
                try:
                    record.ParseFromString(data)
                except DecodeError as exc:
                    raise CaptureError(path, offset, f"corrupt record ({exc})") from None
                if record.WhichOneof("kind") is None:
                    raise CaptureError(path, offset, "record of unknown kind (not an rbln-perfetto capture record)")
                yield offset, data, record
            offset += nread + length


def _truncated(path, offset, reason, strict) -> Truncation:
    if strict:
        raise CaptureError(path, offset, f"truncated capture: {reason}")
    return Truncation(offset, reason)


def read_info(path: str | os.PathLike) -> CaptureInfo:
    """One pass over the capture collecting everything but the invocations (few, small records)."""
    info: CaptureInfo | None = None
    records = _records(path, False, frozenset())
    while True:
        try:
            offset, data, record = next(records)
        except StopIteration as stop:
            if info is None:
                raise CaptureError(path, len(MAGIC), "capture has no header record") from None
            info.truncation = stop.value
            return info
        kind = record.WhichOneof("kind")
        if info is None:
            if kind != "header":
                raise CaptureError(path, offset, f"first record is {kind!r}, expected the run header")
            if record.header.format_version != FORMAT_VERSION:
                raise CaptureError(path, offset, f"capture format version {record.header.format_version} "
                                                 f"is not {FORMAT_VERSION}")
            info = CaptureInfo(Path(path), record.header)
        elif kind == "pipeline":
            info.pipelines.append(record.pipeline)
        elif kind == "program":
            info.programs[record.program.program_id] = record.program
            info.program_records[record.program.program_id] = data
        elif kind == "invocation":
            if record.invocation.program_id not in info.programs:
                raise CaptureError(path, offset, f"invocation of unknown program {record.invocation.program_id}")
            info.invocations += 1
            if record.invocation.memory_allocated:
                info.measured_devices.add(info.programs[record.invocation.program_id].device)
        elif kind == "host":
            info.host_events += 1
        elif kind == "range":
            info.ranges += 1
        elif kind == "untraced":
            info.untraced += 1
        elif kind == "transfer":
            info.transfers += 1
        elif kind == "clock_sync":
            info.clock_syncs.append(record.clock_sync)
        elif kind == "end":
            info.end = record.end

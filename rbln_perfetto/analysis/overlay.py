"""A copy of a trace with its critical path on a track of its own, for the Perfetto UI.

A Perfetto trace is a concatenation of TracePackets, so the copy is the original bytes followed by
a few packets on a sequence of their own: a top-level "Critical path" track and one slice per path
segment (an invocation's run of elements, a host slice, a gap), at the segment's BOOTTIME
timestamps, with its share of the run and the dependency that led to it as args.
"""

from __future__ import annotations

import os
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..errors import ExportError, UsageError
from ..proto_bytes import SEQUENCE_ID
from .sources import opened

TRACK_NAME = "Critical path"
TRACK_UUID = 0x43_50_41_54_48  # "CPATH": far above the exporter's small per-device uuids
OVERLAY_SEQUENCE_ID = SEQUENCE_ID + 0x4350  # a sequence no exporter packet uses


def _annotation(name: str, value) -> pt.DebugAnnotation:
    a = pt.DebugAnnotation(name=name)
    if isinstance(value, str):
        a.string_value = value
    elif isinstance(value, float):
        a.double_value = value
    else:
        a.int_value = int(value)
    return a


def overlay_packets(segments) -> bytes:
    """Serialized packets of the "Critical path" track with one slice per row of `segments`
    (a `critical_path.segments` table: ts, on_path_ms, kind, name, device, share_pct, via)."""
    trace = pt.Trace()
    first = trace.packet.add(trusted_packet_sequence_id=OVERLAY_SEQUENCE_ID,
                             sequence_flags=pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED)
    first.track_descriptor.uuid = TRACK_UUID
    first.track_descriptor.name = TRACK_NAME
    first.track_descriptor.description = ("the chain of host work, invocations, commands and DMAs whose times add up "
                                          "to the run's span (rbln-perfetto report critical-path)")
    for row in segments.itertuples(index=False):
        dur = round(row.on_path_ms * 1e6)
        label = row.name if row.kind != "invocation" else f"{row.name} (device {row.device})"
        start = int(row.ts)
        for ts, kind in ((start, pt.TrackEvent.TYPE_SLICE_BEGIN), (start + dur, pt.TrackEvent.TYPE_SLICE_END)):
            p = trace.packet.add(trusted_packet_sequence_id=OVERLAY_SEQUENCE_ID, timestamp=ts,
                                 timestamp_clock_id=pt.BUILTIN_CLOCK_BOOTTIME,
                                 sequence_flags=pt.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE)
            p.track_event.type = kind
            p.track_event.track_uuid = TRACK_UUID
            if kind == pt.TrackEvent.TYPE_SLICE_BEGIN:
                p.track_event.name = label
                p.track_event.debug_annotations.extend([
                    _annotation("kind", row.kind), _annotation("share_pct", float(row.share_pct)),
                    _annotation("elements", int(row.elements)), _annotation("via", row.via or "start")])
    return trace.SerializeToString()


def write_overlay(trace, out: str | os.PathLike, *, segments=None, backend: str = "auto",
                  tp_bin: str | None = None) -> Path:
    """Write a copy of `trace` (a trace file, a run directory or an open `Trace`) with its critical
    path as a "Critical path" track to `out`, atomically; returns `out`. `segments`: the path's
    `critical_path(trace)` table when already computed."""
    from .critical_path import find
    from .critical_path import segments as segment_table

    with opened(trace, backend, tp_bin) as tr:
        src = Path(tr.path)
        if segments is None:
            segments = segment_table(find(tr))
    out = Path(out)
    if out.exists() and out.resolve() == src.resolve():
        raise UsageError(f"--overlay {out} is the trace itself; the overlay is a copy: give another path")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(src.read_bytes())
            f.write(overlay_packets(segments))
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{out}: cannot write the overlay ({exc.strerror or exc})") from None
    return out

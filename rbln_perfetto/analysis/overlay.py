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
from ..exporter.slice_packets import annotation, boottime_slice_packets
from ..proto_bytes import SEQ_CLEARED, SEQ_NEEDS_STATE, SEQUENCE_ID
from .sources import opened

TRACK_NAME = "Critical path"
TRACK_UUID = 0x43_50_41_54_48  # "CPATH": far above the exporter's small per-device uuids
OVERLAY_SEQUENCE_ID = SEQUENCE_ID + 0x4350  # a sequence no exporter packet uses


def overlay_packets(segments) -> bytes:
    """Serialized packets of the "Critical path" track with one slice per row of `segments`
    (a `critical_path.segments` table: ts, on_path_ms, kind, name, device, share_pct, via)."""
    track = pt.TracePacket(trusted_packet_sequence_id=OVERLAY_SEQUENCE_ID, sequence_flags=SEQ_CLEARED,
                           track_descriptor=pt.TrackDescriptor(
                               uuid=TRACK_UUID, name=TRACK_NAME,
                               description="the chain of host work, invocations, commands and DMAs whose times add "
                                           "up to the run's span (rbln-perfetto report critical-path)"))
    out = pt.Trace(packet=[track]).SerializeToString()
    for row in segments.itertuples(index=False):
        label = row.name if row.kind != "invocation" else f"{row.name} (device {row.device})"
        start = int(row.ts)
        args = [annotation("kind", row.kind), annotation("share_pct", float(row.share_pct)),
                annotation("elements", int(row.elements)), annotation("via", row.via or "start")]
        out += boottime_slice_packets(TRACK_UUID, label, start, start + round(row.on_path_ms * 1e6), args,
                                      sequence_id=OVERLAY_SEQUENCE_ID, sequence_flags=SEQ_NEEDS_STATE)
    return out


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

    def write(f) -> None:
        f.write(src.read_bytes())
        f.write(overlay_packets(segments))

    return write_atomically(out, "overlay", write)


def write_atomically(out: Path, what: str, write) -> Path:
    """Write a trace file that analysis makes (an overlay, a prediction) through `write(file)` into a
    temporary beside `out`, then rename it over `out`: a reader sees the old file or the whole new one.
    Any OSError, reading or writing, is one `ExportError` naming `out` and `what`, and no temporary is left."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"{out}: cannot write the {what} ({exc.strerror or exc})") from None
    return out

"""Trace files read back as Python objects for tests: every packet as Perfetto's message
(`iter_packets`), and the reader's tables as one `Slice` / `Counter` object per row (`read_trace`).
Slow; for tests and small traces."""

from __future__ import annotations

import os
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from rbln_perfetto.errors import TraceReadError
from rbln_perfetto.reader import Track, read_tables
from rbln_perfetto.reader.decoding import parse_view_packets
from rbln_perfetto.reader.diagnosis import describe_non_trace


@dataclass
class Slice:
    id: int
    ts: int
    dur: int
    track_uuid: int
    name: str
    depth: int
    parent_id: int | None
    category: str | None
    args: dict


@dataclass
class Counter:
    ts: int
    track_uuid: int
    value: float


@dataclass
class TraceData:
    """`TraceTables` as Python objects, for code that wants one slice at a time."""

    tracks: dict[int, Track]
    slices: list[Slice]
    counters: list[Counter]
    flows: list[tuple[int, int]]
    stats: dict[str, int]
    used_tracks: list[int]


def iter_packets(path: str | os.PathLike):
    """Every TracePacket of a trace file as Perfetto's message, compressed bundles expanded."""
    for p in _view_packets(Path(path), defaultdict(int)):
        yield pt.TracePacket.FromString(p.SerializeToString())


def _view_packets(path: Path, stats) -> list:
    """The file's packets as the reader's `ViewPacket`s, zlib bundles expanded (zstd ones counted in `stats`)."""
    data = path.read_bytes()
    if not data:
        raise TraceReadError(f"{path}: empty file, not a Perfetto trace")
    packets = parse_view_packets(data, path)
    if not len(packets):
        raise TraceReadError(f"{path}: {describe_non_trace(data)}: no trace packets in it")
    out = []
    for p in packets:
        if p.compressed_packets:
            try:
                out.extend(parse_view_packets(zlib.decompress(p.compressed_packets), path, top_level=False))
            except zlib.error as exc:
                raise TraceReadError(f"{path}: corrupt compressed packets ({exc})") from None
        elif p.zstd_compressed_packets:
            stats["compressed_packets_unsupported:zstd"] += 1
        else:
            out.append(p)
    return out


def read_trace(path: str | os.PathLike) -> TraceData:
    """The trace as Python objects (one `Slice` per slice)."""
    t = read_tables(path)
    slices = [
        Slice(i, int(ts), int(dur), int(track), name, int(depth), None if parent < 0 else int(parent), cat,
              dict(t.arg_set(a)) if a >= 0 else {})
        for i, (ts, dur, track, name, depth, parent, cat, a) in enumerate(zip(
            t.slice_ts.tolist(), t.slice_dur.tolist(), t.slice_track.tolist(), t.slice_name, t.slice_depth.tolist(),
            t.slice_parent.tolist(), t.slice_category, t.slice_arg_set.tolist()))
    ]
    counters = [Counter(int(a), int(b), float(c)) for a, b, c in zip(t.counter_ts, t.counter_track, t.counter_value)]
    return TraceData(t.tracks, slices, counters, t.flows, t.stats, t.used_tracks)

"""Read Perfetto TrackEvent traces into slice, track, args, counter and flow tables.

Follows trace_processor's semantics for what rbln-perfetto writes and what its reference traces
exercise: sequence-scoped interning (event names, categories, annotation names, annotation string
values), incremental-state clearing, `TracePacketDefaults` (timestamp clock, default track), clock
snapshots with builtin and sequence-scoped (incremental) clocks converted to BOOTTIME, zlib
`compressed_packets`, events sorted by timestamp (stable) before slices are built, begin/end
stacks per track, v1 and v2 flow ids, counter tracks, debug annotations as `debug.<name>` args
with identical argument sets shared, as trace_processor does.

What it does not understand (other payloads, zstd bundles, unknown event types) is counted in
`stats`, with trace_processor's stat names where one exists, never mis-read.

Speed: packets are split by protobuf's C parser through a bytes view (`perfetto_view`); each
distinct TrackEvent byte string and argument set is decoded once; slices are built with numpy.
"""

from __future__ import annotations

import os
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from .perfetto_view import KNOWN_PACKET_FIELDS, ViewEvent, ViewTrace

BOOTTIME = pt.BUILTIN_CLOCK_BOOTTIME
BEGIN, END, INSTANT, COUNTER = (pt.TrackEvent.TYPE_SLICE_BEGIN, pt.TrackEvent.TYPE_SLICE_END,
                                pt.TrackEvent.TYPE_INSTANT, pt.TrackEvent.TYPE_COUNTER)
_CLEARED = pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
_NEEDS_STATE = pt.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE
_PACKET_FIELD_NAMES = {f.number: f.name for f in pt.TracePacket.DESCRIPTOR.fields}


class TraceReadError(ValueError):
    """Not a Perfetto protobuf trace (or a corrupt one)."""


@dataclass
class Track:
    uuid: int
    name: str = ""
    parent_uuid: int | None = None
    description: str = ""
    is_counter: bool = False
    unit: str = ""
    id: int | None = None  # assigned when first used, as trace_processor does


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
class TraceTables:
    """Columns of the decoded trace: slice i is row i of every `slice_*` column."""

    tracks: dict[int, Track] = field(default_factory=dict)
    used_tracks: list[int] = field(default_factory=list)  # uuids in track-id order
    slice_ts: np.ndarray = None
    slice_dur: np.ndarray = None
    slice_track: np.ndarray = None  # track uuid
    slice_depth: np.ndarray = None
    slice_parent: np.ndarray = None  # slice id, -1 for none
    slice_arg_set: np.ndarray = None  # -1 for none
    slice_name: list = field(default_factory=list)
    slice_category: list = field(default_factory=list)
    arg_sets: list[dict] = field(default_factory=list)  # arg_set_id -> {key: value}
    counter_ts: np.ndarray = None
    counter_track: np.ndarray = None
    counter_value: np.ndarray = None
    flows: list[tuple[int, int]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def slice_count(self) -> int:
        return len(self.slice_name)


@dataclass
class TraceData:
    """`TraceTables` as Python objects, for code that wants one slice at a time."""

    tracks: dict[int, Track]
    slices: list[Slice]
    counters: list[Counter]
    flows: list[tuple[int, int]]
    stats: dict[str, int]
    used_tracks: list[int]


class _Sequence:
    __slots__ = ("names", "annotation_names", "strings", "categories", "clock_id", "default_track", "valid",
                 "generation")

    def __init__(self, valid=False, generation=0):
        self.names, self.annotation_names, self.strings, self.categories = {}, {}, {}, {}
        self.clock_id = 0
        self.default_track = None
        self.valid = valid
        self.generation = generation


class _Clocks:
    """Clock snapshots, and conversion of any snapshotted clock to the trace clock (BOOTTIME)."""

    def __init__(self, stats):
        self.stats = stats
        self.snapshots: list[dict] = []  # clock key -> ns
        self.incremental: dict = {}  # clock key -> last absolute ns
        self.multiplier: dict = {}
        self._offsets: dict = {}  # clock key -> offset to BOOTTIME through the latest snapshot

    def add(self, snap: pt.ClockSnapshot, seq_id: int) -> None:
        entry = {}
        for c in snap.clocks:
            key = (c.clock_id, seq_id if 64 <= c.clock_id < 128 else 0)
            mult = c.unit_multiplier_ns or 1
            self.multiplier[key] = mult
            entry[key] = c.timestamp * mult
            if c.is_incremental:
                self.incremental[key] = c.timestamp * mult
        self.snapshots.append(entry)
        self._offsets.clear()

    def to_boottime(self, clock_id: int, seq_id: int, ts: int) -> int | None:
        key = (clock_id, seq_id if 64 <= clock_id < 128 else 0)
        last = self.incremental.get(key)
        if last is not None:
            ns = self.incremental[key] = last + ts * self.multiplier[key]
        else:
            ns = ts * self.multiplier.get(key, 1)
        if clock_id == BOOTTIME:
            return ns
        offset = self._offsets.get(key)
        if offset is None:
            path = self._path(key)
            if path is None:
                self.stats["clock_sync_failure_unknown_source_clock"] += 1
                return None
            offset = 0
            for src, dst in path:
                snap = self.snapshots[max(i for i, s in enumerate(self.snapshots) if src in s and dst in s)]
                offset += snap[dst] - snap[src]
            self._offsets[key] = offset
        return ns + offset

    def _path(self, key):
        target = (BOOTTIME, 0)
        frontier, seen = [(key, [])], {key}
        while frontier:
            node, path = frontier.pop(0)
            for snap in self.snapshots:
                if node not in snap:
                    continue
                for other in snap:
                    if other in seen:
                        continue
                    step = path + [(node, other)]
                    if other == target:
                        return step
                    seen.add(other)
                    frontier.append((other, step))
        return None


def _packet_walk(data: bytes) -> tuple[int, str] | None:
    """Where a `Trace` (repeated TracePacket, field 1) stops being well-formed, and why; None if it is."""
    pos = 0
    while pos < len(data):
        start = pos
        if data[pos] != 0x0A:
            return start, f"byte {data[pos]:#04x} where a packet should start"
        pos += 1
        length = shift = 0
        while True:
            if pos >= len(data):
                return start, "a packet length cut short"
            b = data[pos]
            pos += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        if pos + length > len(data):
            return start, f"a packet of {length} bytes cut short after {len(data) - pos}"
        pos += length
    return None


def _what_it_is(data: bytes) -> str:
    from .capture import MAGIC

    if data.startswith(MAGIC):
        return "an rbln-perfetto capture, not a trace: export it first with `rbln-perfetto export`"
    if data[:1] in (b"{", b"["):
        return "a JSON trace (Chrome trace format?); this reader takes Perfetto protobuf traces"
    if data[:2] == b"\x1f\x8b":
        return "gzip-compressed: decompress it first"
    problem = _packet_walk(data)
    if problem is not None and problem[0] > 0:
        return f"a truncated or corrupt Perfetto trace: {problem[1]} at byte offset {problem[0]}"
    return "not a Perfetto protobuf trace (its bytes do not parse as TracePackets)"


def _parse(data: bytes, path, top_level: bool = True) -> list:
    trace = ViewTrace()
    try:
        trace.ParseFromString(data)
    except DecodeError:
        raise TraceReadError(f"{path}: {_what_it_is(data) if top_level else 'corrupt compressed packets'}") from None
    return trace.packet


def iter_packets(path: str | os.PathLike):
    """Every TracePacket of a trace file as Perfetto's message, compressed bundles expanded (slow; for tests)."""
    for p in _view_packets(Path(path), defaultdict(int)):
        yield pt.TracePacket.FromString(p.SerializeToString())


def _view_packets(path: Path, stats) -> list:
    data = path.read_bytes()
    if not data:
        raise TraceReadError(f"{path}: empty file, not a Perfetto trace")
    packets = _parse(data, path)
    if not len(packets):
        raise TraceReadError(f"{path}: {_what_it_is(data)}: no trace packets in it")
    out = []
    for p in packets:
        if p.compressed_packets:
            try:
                out.extend(_parse(zlib.decompress(p.compressed_packets), path, top_level=False))
            except zlib.error as exc:
                raise TraceReadError(f"{path}: corrupt compressed packets ({exc})") from None
        elif p.zstd_compressed_packets:
            stats["compressed_packets_unsupported:zstd"] += 1
        else:
            out.append(p)
    return out


def _unsupported(packet, stats) -> None:
    for f in unknown_fields.UnknownFieldSet(packet):
        name = _PACKET_FIELD_NAMES.get(f.field_number, str(f.field_number))
        if name not in KNOWN_PACKET_FIELDS:
            stats[f"unsupported_packet_field:{name}"] += 1


def _annotation(a: pt.DebugAnnotation, seq: _Sequence, out: dict, key: str) -> None:
    kind = a.WhichOneof("value")
    if kind == "string_value_iid":
        out[key] = seq.strings.get(a.string_value_iid, "")
    elif kind is not None and kind not in ("nested_value", "legacy_json_value", "proto_value"):
        out[key] = getattr(a, kind)
    elif a.dict_entries:
        for e in a.dict_entries:
            _annotation(e, seq, out, f"{key}.{e.name or seq.annotation_names.get(e.name_iid, '')}")
    elif a.array_values:
        for i, e in enumerate(a.array_values):
            _annotation(e, seq, out, f"{key}[{i}]")


def _decode_args(raw: tuple, seq: _Sequence) -> dict:
    args: dict = {}
    for blob in raw:
        a = pt.DebugAnnotation.FromString(blob)
        name = a.name if a.HasField("name") else seq.annotation_names.get(a.name_iid, f"iid_{a.name_iid}")
        _annotation(a, seq, args, f"debug.{name}")
    return args


def read_tables(path: str | os.PathLike) -> TraceTables:
    path = Path(path)
    out = TraceTables()
    stats = out.stats
    packets = _view_packets(path, stats)
    clocks = _Clocks(stats)
    sequences: dict[int, _Sequence] = defaultdict(_Sequence)
    generation = 0
    event_cache: dict[bytes, tuple] = {}
    arg_set_ids: dict[tuple, int] = {}
    ts_col, type_col, track_col, name_col, cat_col, argset_col = [], [], [], [], [], []
    counter_vals, flow_events = [], []  # (event index, flow ids, terminating ids)

    for p in packets:
        seq_id = p.trusted_packet_sequence_id
        seq = sequences[seq_id]
        flags = p.sequence_flags
        if flags & _CLEARED or p.incremental_state_cleared:
            generation += 1
            sequences[seq_id] = seq = _Sequence(True, generation)
        if p.trace_packet_defaults:
            d = pt.TracePacketDefaults.FromString(p.trace_packet_defaults)
            seq.clock_id = d.timestamp_clock_id
            if d.track_event_defaults.HasField("track_uuid"):
                seq.default_track = d.track_event_defaults.track_uuid
        if p.interned_data:
            if not seq.valid:
                stats["interned_data_skipped_incremental_state_invalid"] += 1
            else:
                interned = pt.InternedData.FromString(p.interned_data)
                seq.names.update((e.iid, e.name) for e in interned.event_names)
                seq.annotation_names.update((e.iid, e.name) for e in interned.debug_annotation_names)
                seq.strings.update((e.iid, e.str.decode("utf-8", "replace")) for e in interned.debug_annotation_string_values)
                seq.categories.update((e.iid, e.name) for e in interned.event_categories)
        if p.clock_snapshot:
            clocks.add(pt.ClockSnapshot.FromString(p.clock_snapshot), seq_id)
            continue
        te = p.track_event
        if not te:
            if p.track_descriptor:
                _track_descriptor(out, pt.TrackDescriptor.FromString(p.track_descriptor))
            elif not (p.interned_data or p.trace_packet_defaults or flags):
                _unsupported(p, stats)
            continue
        if flags & _NEEDS_STATE and not seq.valid:
            stats["tokenizer_skipped_packets"] += 1
            continue
        ts = clocks.to_boottime(p.timestamp_clock_id or seq.clock_id or BOOTTIME, seq_id, p.timestamp)
        if ts is None:
            stats["clock_sync_failure_undeferrable_packet_loss"] += 1
            continue
        ev = event_cache.get(te)
        if ev is None:
            e = ViewEvent.FromString(te)
            flows = tuple(e.flow_ids) + tuple(e.flow_ids_old)
            ends = tuple(e.terminating_flow_ids) + tuple(e.terminating_flow_ids_old)
            value = e.double_counter_value if e.HasField("double_counter_value") else float(e.counter_value)
            ev = (e.type, e.track_uuid if e.HasField("track_uuid") else None, e.name if e.HasField("name") else None,
                  e.name_iid, tuple(e.debug_annotations), tuple(e.category_iids), tuple(e.categories),
                  flows, ends, value)
            if len(event_cache) < 1 << 20:
                event_cache[te] = ev
        kind, track, name, name_iid, raw_args, cat_iids, cats, flows, ends, value = ev
        if track is None:
            track = seq.default_track if seq.default_track is not None else 0
        if kind == COUNTER:
            counter_vals.append(value)
        elif kind not in (BEGIN, END, INSTANT):
            stats["unsupported_track_event_type"] += 1
            continue
        if name is None:
            name = seq.names.get(name_iid, "") if name_iid else ""
        argset = -1
        if raw_args:
            key = (seq.generation, raw_args)
            argset = arg_set_ids.get(key)
            if argset is None:
                argset = arg_set_ids[key] = len(out.arg_sets)
                out.arg_sets.append(_decode_args(raw_args, seq))
        if flows or ends:
            flow_events.append((len(ts_col), flows, ends))
        ts_col.append(ts)
        type_col.append(kind)
        track_col.append(track)
        name_col.append(name)
        cat_col.append(",".join([seq.categories.get(i, "") for i in cat_iids] + list(cats)) if (cat_iids or cats) else None)
        argset_col.append(argset)

    if not ts_col and not out.tracks and any(k.startswith("unsupported_packet_field:") for k in stats):
        found = ", ".join(f"{k.split(':', 1)[1]} x{v}" for k, v in stats.items() if k.startswith("unsupported"))
        raise TraceReadError(f"{path}: holds no TrackEvent data this reader understands (found {found}); "
                             "read it with the trace_processor backend")
    _build(out, ts_col, type_col, track_col, name_col, cat_col, argset_col, counter_vals, flow_events)
    return out


def _track_descriptor(out: TraceTables, d: pt.TrackDescriptor) -> None:
    t = out.tracks.setdefault(d.uuid, Track(d.uuid))
    t.name = d.name or d.static_name or t.name
    t.parent_uuid = d.parent_uuid if d.HasField("parent_uuid") else None
    t.description = d.description
    if d.HasField("counter"):
        t.is_counter = True
        t.unit = pt.CounterDescriptor.Unit.Name(d.counter.unit) if d.counter.unit else ""


def _use_track(out: TraceTables, uuid: int) -> None:
    t = out.tracks.get(uuid)
    if t is None:
        t = out.tracks[uuid] = Track(uuid, name="Default Track" if uuid == 0 else "")
    if t.id is not None:
        return
    if t.parent_uuid is not None:
        _use_track(out, t.parent_uuid)
    t.id = len(out.used_tracks)
    out.used_tracks.append(uuid)


def _build(out, ts_col, type_col, track_col, name_col, cat_col, argset_col, counter_vals, flow_events) -> None:
    """Sort events by time (stable, as trace_processor's sorter) and build slices, counters and flows."""
    ts = np.asarray(ts_col, dtype=np.int64)
    kinds = np.asarray(type_col, dtype=np.int64)
    tracks = np.asarray(track_col, dtype=np.uint64)
    order = np.argsort(ts, kind="stable")
    for uuid in dict.fromkeys(tracks[order].tolist()):
        _use_track(out, uuid)

    is_counter = kinds[order] == COUNTER
    c_idx = order[is_counter]
    counter_rank = np.cumsum(kinds == COUNTER) - 1  # event index -> its value in counter_vals
    out.counter_ts = ts[c_idx]
    out.counter_track = tracks[c_idx]
    out.counter_value = np.asarray(counter_vals, dtype=np.float64)[counter_rank[c_idx]] if len(c_idx) else np.zeros(0)

    ev = order[~is_counter]  # slice events in processing order
    k = kinds[ev]
    trk = np.unique(tracks[ev], return_inverse=True)[1].astype(np.int64) if len(ev) else np.zeros(0, np.int64)
    delta = np.where(k == BEGIN, 1, np.where(k == END, -1, 0))
    # Depth after each event: a running sum of +1/-1 within its track (events grouped by track, stably).
    by_track = np.argsort(trk, kind="stable")
    run = np.cumsum(delta[by_track])
    group_start = np.r_[True, trk[by_track][1:] != trk[by_track][:-1]] if len(ev) else np.zeros(0, bool)
    before_group = np.r_[0, run][np.flatnonzero(group_start)]
    depth_after = np.empty(len(ev), dtype=np.int64)
    depth_after[by_track] = run - before_group[np.cumsum(group_start) - 1]
    if (depth_after < 0).any():
        _build_with_stacks(out, ev, k, tracks[ev], ts, name_col, cat_col, argset_col, flow_events)
        return
    depth_before = depth_after - delta

    opens = np.flatnonzero(k != END)  # one slice per BEGIN or INSTANT, ids in processing order
    n = len(opens)
    slice_of_event = np.full(len(ev), -1, dtype=np.int64)
    slice_of_event[opens] = np.arange(n)
    out.slice_ts = ts[ev[opens]]
    out.slice_track = tracks[ev[opens]]
    out.slice_depth = depth_before[opens]
    # A BEGIN is closed by the next END of its track at the same level (ordered by track, level, time).
    dur = np.where(k[opens] == INSTANT, 0, -1).astype(np.int64)
    level = np.where(k == END, depth_after, depth_before)
    pairable = np.flatnonzero(k != INSTANT)
    if len(pairable):
        seq = pairable[np.lexsort((pairable, level[pairable], trk[pairable]))]
        begin = k[seq] == BEGIN
        same_group = (trk[seq[1:]] == trk[seq[:-1]]) & (level[seq[1:]] == level[seq[:-1]])
        closes = np.flatnonzero(begin[:-1] & ~begin[1:] & same_group)
        dur[slice_of_event[seq[closes]]] = ts[ev[seq[closes + 1]]] - ts[ev[seq[closes]]]
    out.slice_dur = dur
    # Parent: the latest earlier slice on the same track one level up.
    parent = np.full(n, -1, dtype=np.int64)
    strack = trk[opens]
    for d in range(1, int(out.slice_depth.max(initial=0)) + 1):
        child = np.flatnonzero(out.slice_depth == d)
        cand = np.flatnonzero(out.slice_depth == d - 1)
        if not len(child) or not len(cand):
            continue
        ckey = strack[cand] * (n + 1) + cand
        rank = np.argsort(ckey)
        idx = np.searchsorted(ckey[rank], strack[child] * (n + 1) + child) - 1
        found = cand[rank[np.clip(idx, 0, None)]]
        ok = (idx >= 0) & (strack[found] == strack[child])
        parent[child[ok]] = found[ok]
    out.slice_parent = parent
    out.slice_name = np.asarray(name_col, dtype=object)[ev[opens]].tolist()
    out.slice_category = np.asarray(cat_col, dtype=object)[ev[opens]].tolist()
    out.slice_arg_set = np.asarray(argset_col, dtype=np.int64)[ev[opens]]
    _flows(out, flow_events, slice_of_event, _positions(ev, len(ts)))


def _build_with_stacks(out, ev, k, trk, ts, name_col, cat_col, argset_col, flow_events) -> None:
    """The general path, for traces with END events that close nothing: one stack per track."""
    stacks: dict[int, list[int]] = defaultdict(list)
    rows = {"ts": [], "dur": [], "track": [], "depth": [], "parent": [], "event": []}
    slice_of_event = np.full(len(ev), -1, dtype=np.int64)
    for i, (kind, track) in enumerate(zip(k.tolist(), trk.tolist())):
        stack = stacks[track]
        if kind == END:
            if not stack:
                out.stats["misplaced_end_event"] += 1
                continue
            s = stack.pop()
            rows["dur"][s] = int(ts[ev[i]]) - rows["ts"][s]
            continue
        sid = len(rows["ts"])
        slice_of_event[i] = sid
        rows["ts"].append(int(ts[ev[i]]))
        rows["dur"].append(0 if kind == INSTANT else -1)
        rows["track"].append(track)
        rows["depth"].append(len(stack))
        rows["parent"].append(stack[-1] if stack else -1)
        rows["event"].append(ev[i])
        if kind == BEGIN:
            stack.append(sid)
    events = np.asarray(rows["event"], dtype=np.int64)
    out.slice_ts = np.asarray(rows["ts"], dtype=np.int64)
    out.slice_dur = np.asarray(rows["dur"], dtype=np.int64)
    out.slice_track = np.asarray(rows["track"], dtype=np.uint64)
    out.slice_depth = np.asarray(rows["depth"], dtype=np.int64)
    out.slice_parent = np.asarray(rows["parent"], dtype=np.int64)
    out.slice_name = [name_col[e] for e in events.tolist()]
    out.slice_category = [cat_col[e] for e in events.tolist()]
    out.slice_arg_set = np.asarray(argset_col, dtype=np.int64)[events] if len(events) else np.zeros(0, np.int64)
    _flows(out, flow_events, slice_of_event, _positions(ev, len(ts)))


def _positions(ev: np.ndarray, n_events: int) -> np.ndarray:
    """Event index -> its position in processing order `ev` (-1 for counters)."""
    pos = np.full(n_events, -1, dtype=np.int64)
    pos[ev] = np.arange(len(ev))
    return pos


def _flows(out, flow_events, slice_of_event, position_of_event) -> None:
    """Flow rows in processing order: flow_ids start or continue a flow, terminating ids end it."""
    open_flows: dict[int, int] = {}
    for pos, flows, ends in sorted((int(position_of_event[i]), f, t) for i, f, t in flow_events):
        sid = int(slice_of_event[pos]) if pos >= 0 else -1
        if sid < 0:
            continue
        for fid in flows:
            if fid in open_flows:
                out.flows.append((open_flows[fid], sid))
            open_flows[fid] = sid
        for fid in ends:
            if fid in open_flows:
                out.flows.append((open_flows.pop(fid), sid))


def read_trace(path: str | os.PathLike) -> TraceData:
    """The trace as Python objects (one `Slice` per slice), for tests and small traces."""
    t = read_tables(path)
    slices = [
        Slice(i, int(ts), int(dur), int(track), name, int(depth), None if parent < 0 else int(parent), cat,
              dict(t.arg_sets[a]) if a >= 0 else {})
        for i, (ts, dur, track, name, depth, parent, cat, a) in enumerate(zip(
            t.slice_ts.tolist(), t.slice_dur.tolist(), t.slice_track.tolist(), t.slice_name, t.slice_depth.tolist(),
            t.slice_parent.tolist(), t.slice_category, t.slice_arg_set.tolist()))
    ]
    counters = [Counter(int(a), int(b), float(c)) for a, b, c in zip(t.counter_ts, t.counter_track, t.counter_value)]
    return TraceData(t.tracks, slices, counters, t.flows, t.stats, t.used_tracks)

"""Read Perfetto TrackEvent traces into slices, tracks, args, counters and flows.

Follows trace_processor's semantics for what rbln-perfetto writes and what its reference traces
exercise: sequence-scoped interning (event names, annotation names, annotation string values),
incremental-state clearing, `TracePacketDefaults` (timestamp clock, default track), clock snapshots
with builtin and sequence-scoped (incremental) clocks converted to BOOTTIME, zlib
`compressed_packets`, events sorted by timestamp (stable) before slices are built, begin/end
stacks per track, v2 flows, counter tracks, debug annotations as `debug.<name>` args.

Anything outside that is counted in `stats` (with trace_processor's stat names where one exists)
instead of being mis-read.
"""

from __future__ import annotations

import os
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

BOOTTIME = pt.BUILTIN_CLOCK_BOOTTIME
_BEGIN, _END, _INSTANT, _COUNTER = (pt.TrackEvent.TYPE_SLICE_BEGIN, pt.TrackEvent.TYPE_SLICE_END,
                                   pt.TrackEvent.TYPE_INSTANT, pt.TrackEvent.TYPE_COUNTER)
# TracePacket fields this reader understands; any other payload is reported as unsupported.
_KNOWN_FIELDS = {
    "timestamp", "timestamp_clock_id", "trusted_packet_sequence_id", "sequence_flags", "incremental_state_cleared",
    "track_event", "track_descriptor", "interned_data", "clock_snapshot", "trace_packet_defaults",
    "compressed_packets", "previous_packet_dropped", "first_packet_on_sequence", "trusted_uid", "trusted_pid",
    "trace_config", "trace_stats", "trace_uuid", "system_info", "service_event", "synchronization_marker",
    "machine_id", "clock_snapshot",
}


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
class TraceData:
    tracks: dict[int, Track] = field(default_factory=dict)
    slices: list[Slice] = field(default_factory=list)
    counters: list[Counter] = field(default_factory=list)
    flows: list[tuple[int, int]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    used_tracks: list[int] = field(default_factory=list)  # uuids in track-id order


@dataclass
class _Sequence:
    names: dict = field(default_factory=dict)
    annotation_names: dict = field(default_factory=dict)
    strings: dict = field(default_factory=dict)
    categories: dict = field(default_factory=dict)
    clock_id: int = 0
    default_track: int | None = None
    valid: bool = False


class _Clocks:
    """Clock snapshots and conversion to the trace clock (BOOTTIME)."""

    def __init__(self, stats):
        self.stats = stats
        self.snapshots: list[dict] = []  # each: clock key -> timestamp ns
        self.incremental: dict = {}  # clock key -> last absolute ns
        self.multiplier: dict = {}

    def add(self, snap, seq_id: int) -> None:
        entry = {}
        for c in snap.clocks:
            key = (c.clock_id, seq_id) if 64 <= c.clock_id < 128 else (c.clock_id, 0)
            mult = c.unit_multiplier_ns or 1
            self.multiplier[key] = mult
            entry[key] = c.timestamp * mult
            if c.is_incremental:
                self.incremental[key] = c.timestamp * mult
        self.snapshots.append(entry)

    def to_boottime(self, clock_id: int, seq_id: int, ts: int) -> int | None:
        key = (clock_id, seq_id) if 64 <= clock_id < 128 else (clock_id, 0)
        if key in self.incremental:
            self.incremental[key] += ts * self.multiplier.get(key, 1)
            ns = self.incremental[key]
        else:
            ns = ts * self.multiplier.get(key, 1)
        if key == (BOOTTIME, 0):
            return ns
        path = self._path(key)
        if path is None:
            self.stats["clock_sync_failure_unknown_source_clock"] += 1
            return None
        for src, dst in path:
            snap = self._snapshot_for(src, dst, ns)
            ns = ns - snap[src] + snap[dst]
        return ns

    def _snapshot_for(self, src, dst, ns) -> dict:
        best = None
        for snap in self.snapshots:
            if src in snap and dst in snap:
                if best is None or snap[src] <= ns:
                    best = snap
        return best

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


def iter_packets(path: str | os.PathLike):
    """Yield every TracePacket of a trace file in order, compressed bundles expanded."""
    data = Path(path).read_bytes()
    if not data:
        raise TraceReadError(f"{path}: empty file, not a Perfetto trace")
    trace = pt.Trace()
    try:
        trace.ParseFromString(data)
    except DecodeError as exc:
        raise TraceReadError(f"{path}: not a Perfetto protobuf trace ({exc})") from None
    if not trace.packet:
        raise TraceReadError(f"{path}: no Perfetto trace packets (is it a trace from another tool?)")
    for packet in trace.packet:
        if packet.HasField("compressed_packets"):
            inner = pt.Trace()
            try:
                inner.ParseFromString(zlib.decompress(packet.compressed_packets))
            except (zlib.error, DecodeError) as exc:
                raise TraceReadError(f"{path}: corrupt compressed packets ({exc})") from None
            yield from inner.packet
        else:
            yield packet


def _annotation_value(a, seq: _Sequence, out: dict, key: str) -> None:
    kind = a.WhichOneof("value")
    if kind == "int_value":
        out[key] = a.int_value
    elif kind == "uint_value":
        out[key] = a.uint_value
    elif kind == "bool_value":
        out[key] = a.bool_value
    elif kind == "double_value":
        out[key] = a.double_value
    elif kind == "string_value":
        out[key] = a.string_value
    elif kind == "string_value_iid":
        out[key] = seq.strings.get(a.string_value_iid, "")
    elif a.dict_entries:
        for e in a.dict_entries:
            _annotation_value(e, seq, out, f"{key}.{e.name}")
    elif a.array_values:
        for i, e in enumerate(a.array_values):
            _annotation_value(e, seq, out, f"{key}[{i}]")
    elif kind == "pointer_value":
        out[key] = a.pointer_value


def read_trace(path: str | os.PathLike) -> TraceData:
    out = TraceData()
    clocks = _Clocks(out.stats)
    sequences: dict[int, _Sequence] = defaultdict(_Sequence)
    events = []  # (ts, order, seq_id, TrackEvent, resolved name, category, args)
    order = 0
    for packet in iter_packets(path):
        seq_id = packet.trusted_packet_sequence_id
        seq = sequences[seq_id]
        if packet.incremental_state_cleared or packet.sequence_flags & pt.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED:
            sequences[seq_id] = seq = _Sequence(valid=True)
        if packet.HasField("trace_packet_defaults"):
            d = packet.trace_packet_defaults
            seq.clock_id = d.timestamp_clock_id
            if d.track_event_defaults.HasField("track_uuid"):
                seq.default_track = d.track_event_defaults.track_uuid
        if packet.HasField("interned_data"):
            interned = packet.interned_data
            seq.names.update((e.iid, e.name) for e in interned.event_names)
            seq.annotation_names.update((e.iid, e.name) for e in interned.debug_annotation_names)
            seq.strings.update((e.iid, e.str.decode("utf-8", "replace")) for e in interned.debug_annotation_string_values)
            seq.categories.update((e.iid, e.name) for e in interned.event_categories)
        if packet.HasField("clock_snapshot"):
            clocks.add(packet.clock_snapshot, seq_id)
            continue
        if packet.HasField("track_descriptor"):
            d = packet.track_descriptor
            t = out.tracks.setdefault(d.uuid, Track(d.uuid))
            t.name = d.name or d.static_name or t.name
            t.parent_uuid = d.parent_uuid if d.HasField("parent_uuid") else None
            t.description = d.description
            if d.HasField("counter"):
                t.is_counter = True
                t.unit = pt.CounterDescriptor.Unit.Name(d.counter.unit) if d.counter.unit else ""
        for f, _ in packet.ListFields():
            if f.name not in _KNOWN_FIELDS:
                out.stats[f"unsupported_packet_field:{f.name}"] += 1
        if not packet.HasField("track_event"):
            continue
        if packet.sequence_flags & pt.TracePacket.SEQ_NEEDS_INCREMENTAL_STATE and not seq.valid:
            out.stats["tokenizer_skipped_packets"] += 1
            continue
        ts = packet.timestamp
        clock_id = packet.timestamp_clock_id or seq.clock_id or BOOTTIME
        ts = clocks.to_boottime(clock_id, seq_id, ts)
        if ts is None:
            out.stats["clock_sync_failure_undeferrable_packet_loss"] += 1
            continue
        te = packet.track_event
        name = te.name if te.HasField("name") else seq.names.get(te.name_iid, "") if te.name_iid else ""
        cats = [seq.categories.get(i, "") for i in te.category_iids] + list(te.categories)
        args: dict = {}
        for a in te.debug_annotations:
            key = a.name if a.HasField("name") else seq.annotation_names.get(a.name_iid, f"iid_{a.name_iid}")
            _annotation_value(a, seq, args, f"debug.{key}")
        events.append((ts, order, seq, te, name, ",".join(cats) if cats else None, args))
        order += 1

    events.sort(key=lambda e: (e[0], e[1]))
    stacks: dict[int, list[Slice]] = defaultdict(list)
    open_flows: dict[int, int] = {}
    for ts, _, seq, te, name, category, args in events:
        track = te.track_uuid if te.HasField("track_uuid") else (seq.default_track if seq.default_track is not None else 0)
        _use_track(out, track)
        if te.type == _COUNTER:
            value = te.double_counter_value if te.HasField("double_counter_value") else te.counter_value
            out.counters.append(Counter(ts, track, float(value)))
            continue
        if te.type in (_BEGIN, _INSTANT):
            stack = stacks[track]
            parent = stack[-1] if stack else None
            s = Slice(len(out.slices), ts, 0 if te.type == _INSTANT else -1, track, name,
                      len(stack), parent.id if parent else None, category, args)
            out.slices.append(s)
            if te.type == _BEGIN:
                stack.append(s)
            for fid in list(te.flow_ids) + list(te.flow_ids_old):
                if fid in open_flows:
                    out.flows.append((open_flows[fid], s.id))
                open_flows[fid] = s.id
            for fid in list(te.terminating_flow_ids) + list(te.terminating_flow_ids_old):
                if fid in open_flows:
                    out.flows.append((open_flows.pop(fid), s.id))
        elif te.type == _END:
            stack = stacks[track]
            if not stack:
                out.stats["misplaced_end_event"] += 1
                continue
            s = stack.pop()
            s.dur = ts - s.ts
        else:
            out.stats["unsupported_track_event_type"] += 1
    return out


def _use_track(out: TraceData, uuid: int) -> None:
    t = out.tracks.get(uuid)
    if t is None:
        t = out.tracks[uuid] = Track(uuid, name="Default Track" if uuid == 0 else "")
    if t.id is not None:
        return
    if t.parent_uuid is not None:
        _use_track(out, t.parent_uuid)
    t.id = len(out.used_tracks)
    out.used_tracks.append(uuid)

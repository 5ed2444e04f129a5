"""Packets to event columns: one pass over a trace's packets in file order, keeping trace_processor's
sequence semantics (interning, incremental-state clearing, packet defaults, clocks), with tracks,
strings and argument sets collected into `TraceTables` as they are met."""

from __future__ import annotations

import re
from collections import defaultdict
from operator import itemgetter
from pathlib import Path

import numpy as np
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..errors import TraceReadError
from ..proto_bytes import (COUNTER, INSTANT, SEQ_CLEARED, SEQ_NEEDS_STATE, SLICE_BEGIN, SLICE_END, FieldNumber, tag,
                           varint)
from .clocks import BOOTTIME, ClockConverter
from .columns import EventColumns, HashIdTable
from .debug_args import arg_value_ids, as_text
from .diagnosis import describe_non_trace
from .packet_view import END_WITH_FIELDS, KNOWN_PACKET_FIELDS, ViewEvent, ViewPacket, ViewTrace
from .scanned_runs import decode_simple_run
from .scanner import BundlePrefetcher, inflate_bundle, scan_packets
from .tables import TraceTables, Track

_PACKET_FIELD_NAMES = {f.number: f.name for f in pt.TracePacket.DESCRIPTOR.fields}
# A name with a decimal prefix: the prefix is stored as a number, the rest interned (see TraceTables).
_DECIMAL_PREFIXED = re.compile(r"(0|[1-9]\d{0,17})(\D.*)?\Z", re.S | re.ASCII)
_ANNOTATION_TAG = tag(FieldNumber.DEBUG_ANNOTATIONS, 2)
_MERGE_NONE = pt.TrackDescriptor.SIBLING_MERGE_BEHAVIOR_NONE
_EVENT_FIELD_NAMES = {f.number: f.name for f in pt.TrackEvent.DESCRIPTOR.fields}


class SequenceState:
    """One packet sequence's incremental state: its interning tables and packet defaults."""

    __slots__ = ("names", "annotation_names", "strings", "categories", "clock_id", "default_track", "valid",
                 "generation", "counter_values")

    def __init__(self, valid=False, generation=0):
        self.names, self.annotation_names, self.strings, self.categories = {}, {}, {}, {}
        self.counter_values: dict[int, float] = {}  # incremental counter track -> its value so far
        self.clock_id = 0
        self.default_track = None
        self.valid = valid
        self.generation = generation


def parse_view_packets(data: bytes, path, top_level: bool = True) -> list:
    """The packets of a serialized Trace as `ViewPacket`s; TraceReadError, saying what the bytes are
    instead, when they do not parse."""
    trace = ViewTrace()
    try:
        trace.ParseFromString(data)
    except DecodeError:
        raise TraceReadError(f"{path}: {describe_non_trace(data) if top_level else 'corrupt compressed packets'}") from None
    return trace.packet


def _count_unsupported_fields(packet, stats) -> None:
    for f in unknown_fields.UnknownFieldSet(packet):
        name = _PACKET_FIELD_NAMES.get(f.field_number, str(f.field_number))
        if name not in KNOWN_PACKET_FIELDS:
            stats[f"unsupported_packet_field:{name}"] += 1


def _reserve_track(tables: TraceTables, d: pt.TrackDescriptor, stats) -> None:
    """A track descriptor, as trace_processor reserves it: the first one sent for a uuid holds; a later one
    for the same uuid with another parent or kind is an error and ignored; a later name replaces none,
    or any name on a SIBLING_MERGE_BEHAVIOR_NONE track."""
    name = as_text(d.name if d.HasField("name") else d.static_name) or None  # ("" is no name there too)
    parent = d.parent_uuid or None
    t = tables.tracks.get(d.uuid)
    if t is None:
        t = tables.tracks[d.uuid] = Track(d.uuid, name, parent, d.description, d.HasField("counter"),
                                          mergeable=d.sibling_merge_behavior != _MERGE_NONE)
        if d.HasField("counter"):
            t.unit = pt.CounterDescriptor.Unit.Name(d.counter.unit) if d.counter.unit else ""
            t.counter_multiplier = d.counter.unit_multiplier if d.counter.unit_multiplier > 0 else 1
            t.counter_incremental = d.counter.is_incremental
        return
    if (t.parent_uuid, t.is_counter, t.mergeable) != (parent, d.HasField("counter"), d.sibling_merge_behavior != _MERGE_NONE):
        stats["track_descriptor_conflicting_reservation"] += 1
        return
    if name is not None and (t.name is None or d.sibling_merge_behavior == _MERGE_NONE):
        t.name = name


class PacketDecoder:
    """One pass over a trace's packets, in file order, keeping trace_processor's sequence semantics.

    Events go to `columns` (and flow ids to `flow_events`); tracks, strings and argument sets go
    straight into `tables`, and what is not understood into `tables.stats`."""

    def __init__(self, path: Path, tables: TraceTables, scanner):
        self.path, self.tables, self.stats, self.scanner = path, tables, tables.stats, scanner
        self.clocks = ClockConverter(self.stats)
        self.sequences: dict[int, SequenceState] = defaultdict(SequenceState)
        self.generation = 0
        self.event_cache: dict[bytes, tuple] = {}  # TrackEvent bytes -> its decoded fields
        self.arg_set_ids: dict[tuple, int] = {}
        self.annotation_memo: dict[int, dict] = {}  # generation -> annotation bytes -> value ids
        self.value_ids: dict[tuple, int] = {}  # (key, type, value) -> value id
        self.value_keys: list[str] = []  # value id -> its key (tables.arg_values' keys, for one lookup each)
        self.string_ids: dict[str, int] = {}
        self.name_hashes = HashIdTable(scanner)  # inline name (scanner's hash) -> string id
        # per generation: args hash -> arg set id
        self.args_hashes: dict[int, HashIdTable] = defaultdict(lambda: HashIdTable(scanner))
        self.name_refs: dict[str, tuple[int, int]] = {}  # name -> (decimal prefix or -1, string id)
        self.columns = EventColumns()
        self.flow_events: list = []  # (event index, flow ids, terminating ids)
        self.top_level_packets = 0

    # ---------------------------------------------------------------- strings
    def intern(self, s: str) -> int:
        s = as_text(s)  # (a C string in trace_processor: up to its first NUL)
        i = self.string_ids.get(s)
        if i is None:
            i = self.string_ids[s] = len(self.tables.strings)
            self.tables.strings.append(s)
        return i

    def name_ref(self, name: str | None) -> tuple[int, int]:
        """(decimal prefix or -1, string id) of a name; (-1, -1) for an event without one."""
        if name is None:
            return -1, -1
        ref = self.name_refs.get(name)
        if ref is None:
            m = _DECIMAL_PREFIXED.match(name)
            ref = (int(m.group(1)), self.intern(m.group(2))) if m and m.group(2) is not None else (-1, self.intern(name))
            if len(self.name_refs) < 1 << 20:
                self.name_refs[name] = ref
        return ref

    def args_key(self, seq: SequenceState, raw: tuple) -> tuple:
        """The key of an argument set in `arg_set_ids`: its bytes, or with the scanner the scanner's hash of them."""
        if self.scanner is None:
            return seq.generation, raw
        field = b"".join(_ANNOTATION_TAG + varint(len(b)) + b for b in raw)
        return seq.generation, self.scanner.hash_bytes(field)

    def arg_set(self, key: tuple, seq: SequenceState, raw) -> int:
        """The id of the argument set `key`; `raw` (its annotations, or a function giving them) is decoded when new."""
        argset = self.arg_set_ids.get(key)
        if argset is None:
            argset = self.arg_set_ids[key] = len(self.tables.arg_set_values)
            memo = self.annotation_memo.setdefault(seq.generation, {})
            ids = arg_value_ids(raw() if callable(raw) else raw, seq, memo, self.value_id, self.stats)
            if len(ids) > 1 and len(set(itemgetter(*ids)(self.value_keys))) < len(ids):
                # a key given twice: the last value wins, in the first one's place
                by_key = {}
                for v in ids:
                    by_key[self.tables.arg_values[v][0]] = v
                ids = tuple(by_key.values())
            self.tables.arg_set_values.append(ids)
        return argset

    def value_id(self, key: str, value) -> int:
        k = (key, type(value), value)
        vid = self.value_ids.get(k)
        if vid is None:
            vid = self.value_ids[k] = len(self.tables.arg_values)
            self.tables.arg_values.append((key, value))
            self.value_keys.append(key)
        return vid

    def counter_value(self, seq: SequenceState, track: int | None, value: float) -> float | None:
        """A counter event's value as trace_processor stores it (times the track's unit multiplier, summed
        on the sequence for an incremental track); None, counted, when it has no counter track to go to."""
        if track is None:
            self.stats["track_event_counter_missing_track_uuid"] += 1
            return None
        t = self.tables.tracks.get(track)
        if t is None or not t.is_counter:
            self.stats["track_event_counter_invalid_track_uuid"] += 1
            return None
        value *= t.counter_multiplier
        if t.counter_incremental:
            value = seq.counter_values[track] = seq.counter_values.get(track, 0.0) + value
        return value

    # ---------------------------------------------------------------- buffers
    def read_buffer(self, data: bytes, top_level: bool, records: np.ndarray | None = None) -> None:
        """Every packet of a serialized Trace, compressed bundles expanded in place."""
        if records is None:
            records = scan_packets(self.scanner, data)
        if records is None:  # no scanner, or malformed: the protobuf parser says how
            packets = parse_view_packets(data, self.path, top_level)
            self.top_level_packets += len(packets) if top_level else 0
            for p in packets:
                self.read_packet(p)
            return
        self.top_level_packets += len(records) if top_level else 0
        simple = (records["simple"] == 1) & ((records["flags"] & SEQ_CLEARED) == 0)
        prefetcher = BundlePrefetcher(data, records, np.flatnonzero(~simple), self.scanner) if top_level else None
        try:
            # Runs of simple packets go column-wise; every other packet (and short runs) one at a time.
            edges = np.flatnonzero(np.diff(simple.astype(np.int8))) + 1
            for i, j in zip(np.r_[0, edges].tolist(), np.r_[edges, len(records)].tolist()):
                if i == j:
                    continue
                if simple[i] and j - i >= 8:
                    decode_simple_run(self, data, records[i:j])
                    continue
                for k, off, length in zip(range(i, j), records["off"][i:j].tolist(), records["len"][i:j].tolist()):
                    if prefetcher is not None and not simple[k]:
                        self.read_packet(*prefetcher.take(k))
                    else:
                        self.read_packet(ViewPacket.FromString(data[off:off + length]))
        finally:
            if prefetcher is not None:
                prefetcher.close()

    def read_packet(self, p, inflated=None) -> None:
        """One packet; `inflated`: the future of its bundle's `inflate_bundle`, when prefetched."""
        if p.compressed_packets:
            if inflated is not None:
                inner, records, error = inflated.result()
            else:
                inner, records, error = inflate_bundle(p.compressed_packets, self.scanner)
            if error:
                raise TraceReadError(f"{self.path}: corrupt compressed packets ({error})")
            self.read_buffer(inner, top_level=False, records=records)
            return
        if p.zstd_compressed_packets:
            self.stats["compressed_packets_unsupported:zstd"] += 1
            return
        stats, tables = self.stats, self.tables
        seq_id = p.trusted_packet_sequence_id
        seq = self.sequences[seq_id]
        flags = p.sequence_flags
        if flags & SEQ_CLEARED or p.incremental_state_cleared:
            self.generation += 1
            self.sequences[seq_id] = seq = SequenceState(True, self.generation)
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
                seq.names.update((e.iid, as_text(e.name)) for e in interned.event_names)
                seq.annotation_names.update((e.iid, as_text(e.name)) for e in interned.debug_annotation_names)
                seq.strings.update((e.iid, as_text(e.str)) for e in interned.debug_annotation_string_values)
                seq.categories.update((e.iid, as_text(e.name)) for e in interned.event_categories)
        if p.clock_snapshot:
            self.clocks.add(pt.ClockSnapshot.FromString(p.clock_snapshot), seq_id)
            return
        te = p.track_event
        if not te:
            if p.track_descriptor:
                _reserve_track(tables, pt.TrackDescriptor.FromString(p.track_descriptor), stats)
            elif not (p.interned_data or p.trace_packet_defaults or flags):
                _count_unsupported_fields(p, stats)
            return
        if flags & SEQ_NEEDS_STATE and not seq.valid:
            stats["tokenizer_skipped_packets"] += 1
            return
        ts = self.clocks.to_boottime(p.timestamp_clock_id or seq.clock_id or BOOTTIME, seq_id, p.timestamp)
        if ts is None:
            stats["clock_sync_failure_undeferrable_packet_loss"] += 1
            return
        if ts < 0:
            stats["track_event_invalid_timestamp"] += 1
            return
        ev = self.event_cache.get(te)
        if ev is None:
            e = ViewEvent.FromString(te)
            unread = tuple(f"unsupported_track_event_field:{_EVENT_FIELD_NAMES.get(f.field_number, f.field_number)}"
                           for f in unknown_fields.UnknownFieldSet(e))
            flows = tuple(e.flow_ids) + tuple(e.flow_ids_old)
            ends = tuple(e.terminating_flow_ids) + tuple(e.terminating_flow_ids_old)
            value = e.double_counter_value if e.HasField("double_counter_value") else float(e.counter_value)
            ev = (e.type, e.track_uuid if e.HasField("track_uuid") else None, e.name if e.HasField("name") else None,
                  e.name_iid, tuple(e.debug_annotations), tuple(e.category_iids), tuple(e.categories),
                  flows, ends, value, unread)
            if len(self.event_cache) < 1 << 16:
                self.event_cache[te] = ev
        kind, track, name, name_iid, raw_args, cat_iids, cats, flows, ends, value, unread = ev
        for what in unread:  # what it would not read: said, and the rest of the event read
            stats[what] += 1
        if kind == SLICE_END and (cat_iids or cats or raw_args or flows or ends):
            stats[END_WITH_FIELDS] += 1  # (see packet_view)
        if track is None:
            track = seq.default_track
        if kind == COUNTER:
            value = self.counter_value(seq, track, value)
            if value is None:
                return
            self.columns.counter_pending.append(value)
        elif kind not in (SLICE_BEGIN, SLICE_END, INSTANT):
            stats["unsupported_track_event_type"] += 1
            return
        if track is None:
            track = 0
        if name is None:
            name = seq.names.get(name_iid) if name_iid else None
        name = as_text(name)
        argset = self.arg_set(self.args_key(seq, raw_args), seq, raw_args) if raw_args else -1
        if flows or ends:
            self.flow_events.append((self.columns.count, flows, ends))
        category = ",".join([seq.categories.get(i, "") for i in cat_iids] + [as_text(c) for c in cats]) if (cat_iids or cats) else None
        self.columns.add(ts, kind, track, *self.name_ref(name), -1 if category is None else self.intern(category), argset)

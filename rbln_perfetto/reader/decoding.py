"""Packets to event columns, a packet at a time: one pass over a trace's packets in file order, keeping
trace_processor's sequence semantics (incremental-state clearing, interned data, packet defaults, clock
snapshots, track descriptors); batches of plain TrackEvent packets are handed to `scanned_batches`, and what a
pass accumulates lives in `read_state`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..errors import TraceReadError
from ..proto_bytes import COUNTER, INSTANT, SEQ_CLEARED, SEQ_NEEDS_STATE, SLICE_BEGIN, SLICE_END
from .clocks import BOOTTIME, wrap_int64
from .debug_args import as_text
from .diagnosis import describe_non_trace
from .packet_view import KNOWN_PACKET_FIELDS, ViewEvent, ViewPacket, ViewTrace
from .read_state import ReadState
from .scanned_batches import decode_simple_batch
from .scanner import BundlePrefetcher, inflate_bundle, scan_packets
from .sequence_state import SequenceState
from .tables import TraceTables, Track

_PACKET_FIELD_NAMES = {f.number: f.name for f in pt.TracePacket.DESCRIPTOR.fields}
_MERGE_NONE = pt.TrackDescriptor.SIBLING_MERGE_BEHAVIOR_NONE
_EVENT_FIELD_NAMES = {f.number: f.name for f in pt.TrackEvent.DESCRIPTOR.fields}


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


def _reserve_track(tables: TraceTables, d: pt.TrackDescriptor, stats, parse_ts: int = 0) -> None:
    """A track descriptor, as trace_processor reserves it: the first one sent for a uuid holds; a later one
    for the same uuid with another parent or kind is an error and ignored; a later name replaces none,
    or any name on a SIBLING_MERGE_BEHAVIOR_NONE track. A thread or process it names is listed with
    `parse_ts` (when trace_processor's sorter parses the packet) in `tables.owner_descriptors`."""
    if d.HasField("thread"):
        tables.owner_descriptors.append((parse_ts, len(tables.owner_descriptors), d.uuid,
                                         ("thread", d.thread.pid, d.thread.tid, as_text(d.thread.thread_name) or None)))
    elif d.HasField("process"):
        tables.owner_descriptors.append((parse_ts, len(tables.owner_descriptors), d.uuid,
                                         ("process", d.process.pid, as_text(d.process.process_name) or None)))
    name = as_text(d.name if d.HasField("name") else d.static_name) or None  # ("" is no name there too)
    parent = d.parent_uuid or None
    t = tables.tracks.get(d.uuid)
    if t is None:
        t = tables.tracks[d.uuid] = Track(d.uuid, name, parent, d.description, d.HasField("counter"),
                                          mergeable=d.sibling_merge_behavior != _MERGE_NONE,
                                          is_state=d.HasField("state"))
        if d.HasField("thread"):
            t.thread = (d.thread.pid, d.thread.tid, as_text(d.thread.thread_name) or None)
        if d.HasField("process"):
            t.process = (d.process.pid, as_text(d.process.process_name) or None,
                         " ".join(as_text(c) for c in d.process.cmdline) or None)
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


# A TrackEvent packet with no timestamp (none of its own, no legacy one): trace_processor drops it.
MISSING_TIMESTAMP = "track_event_missing_timestamp"
# A TrackEvent with `timestamp_delta_us` and no ThreadDescriptor baseline on its sequence: trace_processor
# skips it. (A sequence with a ThreadDescriptor is refused: `unsupported_packet_field:thread_descriptor`.)
DELTA_WITHOUT_BASELINE = "track_event_skipped_timestamp_delta_without_valid_state"


class PacketDecoder(ReadState):
    """One pass over a trace's packets, in file order, keeping trace_processor's sequence semantics; tracks
    go into `tables` as their descriptors come."""

    def __init__(self, path: Path, tables: TraceTables, scanner):
        super().__init__(tables, scanner)
        self.path = path
        self.event_cache: dict[bytes, tuple] = {}  # TrackEvent bytes -> its decoded fields
        self.top_level_packets = 0

    def read_deferred(self) -> None:
        """The end of the file: the TrackEvent packets whose clock no snapshot linked to BOOTTIME when they came
        are converted now, through every snapshot, and tokenized with their sequences' state as it is now;
        those still unlinked are dropped and counted (trace_processor's eof_deferred_packets_)."""
        self.at_eof = True
        deferred, self.deferred = self.deferred, []
        for p, seq_id in deferred:
            self.tokenize_event(p, seq_id)

    def packet_time(self, p, seq, seq_id: int) -> int | None:
        """The packet's timestamp converted to BOOTTIME (None: no snapshot links its clock); the latest one
        so far is kept in `latest_ts`, as trace_processor's reader keeps it for packets without one."""
        ts = self.clocks.to_boottime(p.timestamp_clock_id or seq.clock_id or BOOTTIME, seq_id, p.timestamp)
        if ts is not None and ts > self.latest_ts:
            self.latest_ts = ts
        return ts

    def event_time(self, packet_ts: int | None, delta_us: int | None, absolute_us: int) -> int | None:
        """A TrackEvent's time in BOOTTIME ns as trace_processor's tokenizer resolves it, or None (counted)
        when it drops the event: a legacy `timestamp_delta_us` (no baseline here, see DELTA_WITHOUT_BASELINE)
        comes first, then a non-zero `timestamp_absolute_us` (times 1000 in int64 that wraps, then from
        MONOTONIC), then the packet's timestamp (`packet_ts`, converted; None: it has none). A time that
        comes out negative (a wrap past int64) is dropped and counted (`track_event_invalid_timestamp`)."""
        if delta_us is not None:
            self.stats[DELTA_WITHOUT_BASELINE] += 1
            return None
        if absolute_us:
            ts = self.clocks.legacy_to_boottime(wrap_int64(absolute_us * 1000))
        elif packet_ts is None:
            self.stats[MISSING_TIMESTAMP] += 1
            return None
        else:
            ts = packet_ts
        if ts < 0:
            self.stats["track_event_invalid_timestamp"] += 1
            return None
        return ts

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
            # Batches of simple packets go column-wise; every other packet (and short batches) one at a time.
            edges = np.flatnonzero(np.diff(simple.astype(np.int8))) + 1
            for i, j in zip(np.r_[0, edges].tolist(), np.r_[edges, len(records)].tolist()):
                if i == j:
                    continue
                if simple[i] and j - i >= 8:
                    decode_simple_batch(self, data, records[i:j])
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
                # (parsed at its own time, or at the latest one read before it, as trace_processor's sorter does)
                own = None
                if p.HasField("timestamp") and self.clocks.has_path(p.timestamp_clock_id or seq.clock_id or BOOTTIME,
                                                                     seq_id):
                    own = self.packet_time(p, seq, seq_id)
                _reserve_track(tables, pt.TrackDescriptor.FromString(p.track_descriptor), stats,
                               self.latest_ts if own is None else own)
            else:  # (sequence flags, defaults or interned data may come with a payload it does not read)
                _count_unsupported_fields(p, stats)
            return
        if flags & SEQ_NEEDS_STATE and not seq.valid:
            stats["tokenizer_skipped_packets"] += 1
            return
        self.tokenize_event(p, seq_id)

    def tokenize_event(self, p, seq_id: int) -> None:
        """A TrackEvent packet's time and event, with its sequence's state as it is now (at the end of the file
        for a deferred one, as trace_processor's TimestampTokenizeAndPushToSorter)."""
        stats, te, seq = self.stats, p.track_event, self.sequences[seq_id]
        ts = None
        if p.HasField("timestamp"):  # (without one trace_processor converts nothing: the event may have its own)
            clock = p.timestamp_clock_id or seq.clock_id or BOOTTIME
            if not self.at_eof and not self.clocks.has_path(clock, seq_id):
                self.deferred.append((p, seq_id))  # (converted at the end of the file: see read_deferred)
                return
            ts = self.packet_time(p, seq, seq_id)
            if ts is None:
                stats["clock_sync_failure_undeferrable_packet_loss"] += 1
                return
        ev = self.event_cache.get(te)
        if ev is None:
            e = ViewEvent.FromString(te)
            unread = tuple(f"unsupported_track_event_field:{_EVENT_FIELD_NAMES.get(f.field_number, f.field_number)}"
                           for f in unknown_fields.UnknownFieldSet(e))
            flows = tuple(e.flow_ids) + tuple(e.flow_ids_old)
            ends = tuple(e.terminating_flow_ids) + tuple(e.terminating_flow_ids_old)
            value = e.double_counter_value if e.HasField("double_counter_value") else float(e.counter_value)
            legacy = (e.timestamp_delta_us if e.HasField("timestamp_delta_us") else None, e.timestamp_absolute_us)
            ev = (e.type, e.track_uuid if e.HasField("track_uuid") else None, e.name if e.HasField("name") else None,
                  e.name_iid, tuple(e.debug_annotations), tuple(e.category_iids), tuple(e.categories),
                  flows, ends, value, unread, legacy)
            if len(self.event_cache) < 1 << 16:
                self.event_cache[te] = ev
        kind, track, name, name_iid, raw_args, cat_iids, cats, flows, ends, value, unread, legacy = ev
        ts = self.event_time(ts, *legacy)
        if ts is None:
            return
        for what in unread:  # what it would not read: said, and the rest of the event read
            stats[what] += 1
        if kind == SLICE_END and (cat_iids or cats or raw_args or flows or ends or name is not None or name_iid):
            self.matched_ends += 1
        if track is None:
            track = seq.default_track
        if kind == COUNTER:
            value = self.counter_value(seq, track, value)
            if value is None:
                return
            self.columns.counter_pending.append(value)
        elif kind not in (SLICE_BEGIN, SLICE_END, INSTANT):
            self.drop_event_of_type(kind, track)
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

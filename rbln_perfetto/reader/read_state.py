"""What one pass over a trace accumulates and looks up as it goes (`ReadState`): the sequences' incremental
states, the strings, argument sets and counter values read so far, and the event columns, which both the
packet-at-a-time decoder (`decoding`) and the column-wise one (`scanned_batches`) fill."""

from __future__ import annotations

import re
from collections import defaultdict
from operator import itemgetter

from ..proto_bytes import STATE, FieldNumber, tag, varint
from .clocks import ClockConverter
from .columns import EventColumns, HashIdTable
from .debug_args import arg_value_ids, as_text
from .sequence_state import SequenceState
from .tables import TraceTables

# A name with a decimal prefix: the prefix is stored as a number, the rest interned (see TraceTables).
_DECIMAL_PREFIXED = re.compile(r"(0|[1-9]\d{0,17})(\D.*)?\Z", re.S | re.ASCII)
_ANNOTATION_TAG = tag(FieldNumber.DEBUG_ANNOTATIONS, 2)
UNSPECIFIED = 0  # (TrackEvent.TYPE_UNSPECIFIED)


class ReadState:
    """The strings, argument sets, sequences, clocks and event columns of one pass over a trace.

    Events go to `columns` (and flow ids to `flow_events`); strings and argument sets go straight into
    `tables`, and what is not understood into `tables.stats`."""

    def __init__(self, tables: TraceTables, scanner):
        self.tables, self.stats, self.scanner = tables, tables.stats, scanner
        self.clocks = ClockConverter(self.stats)
        self.sequences: dict[int, SequenceState] = defaultdict(SequenceState)
        self.generation = 0
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
        # END events with a name, categories, args or flows: trace_processor ends the innermost open slice
        # they match (by name and category) and gives it their args and flows, which takes the per-event
        # slice builder (see slices)
        self.matched_ends = 0
        self.latest_ts = 0  # the latest packet time read (converted), trace_processor's `latest_timestamp_`
        self.deferred: list[tuple] = []  # (packet, sequence id) of TrackEvents whose clock had no path yet
        self.at_eof = False  # (then a clock without a path drops its event: see decoding.read_deferred)

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

    def drop_event_of_type(self, kind: int, track: int | None) -> None:
        """Count an event of a type other than BEGIN, END, INSTANT and COUNTER, which is not read, as
        trace_processor's TrackEventEventImporter has it: TYPE_UNSPECIFIED ("TrackEvent without type or
        phase") and a type it does not know on a track of no thread (a "raw legacy event without thread
        association") are errors it drops (`track_event_parser_errors`); a type it does not know on a thread's
        track goes to its raw table only (no row here either); a TYPE_STATE event on a track without a
        `state` descriptor is an error too; one on a state track is a refusal (the embedded reader does not
        build state tracks)."""
        t = self.tables.tracks.get(track) if track is not None else None
        if kind == STATE and t is not None and t.is_state:
            self.stats["unsupported_state_track_event"] += 1
        elif kind in (UNSPECIFIED, STATE):
            self.stats["track_event_parser_errors"] += 1
        else:
            owner = self.tables.descriptor_owner(track) if track is not None else None
            if owner is None or owner.thread is None:
                self.stats["track_event_parser_errors"] += 1

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

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
import re
import zlib
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import unknown_fields
from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from .perfetto_view import KNOWN_PACKET_FIELDS, ViewEvent, ViewPacket, ViewTrace
from .proto_bytes import F, tag, varint

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
    # A name is strings[name_id] after the decimal name_prefix (-1: none), as the SQL backend stores it.
    slice_name_prefix: np.ndarray = None
    slice_name_id: np.ndarray = None
    slice_category_id: np.ndarray = None  # into strings, -1 for none
    strings: list[str] = field(default_factory=list)
    # Argument sets, normalized: each distinct (key, value) once, a set as the ids of its values.
    arg_values: list[tuple] = field(default_factory=list)  # value id -> (key, value)
    arg_set_values: list[tuple] = field(default_factory=list)  # arg_set_id -> value ids, in key order
    _arg_dicts: list = field(default_factory=list, repr=False)
    counter_ts: np.ndarray = None
    counter_track: np.ndarray = None
    counter_value: np.ndarray = None
    flows: list[tuple[int, int]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def slice_count(self) -> int:
        return len(self.slice_ts)

    def arg_set(self, arg_set_id: int) -> dict:
        """{key: value} of one argument set (built on first use)."""
        if len(self._arg_dicts) < len(self.arg_set_values):
            self._arg_dicts.extend([None] * (len(self.arg_set_values) - len(self._arg_dicts)))
        d = self._arg_dicts[arg_set_id]
        if d is None:
            values = self.arg_values
            d = self._arg_dicts[arg_set_id] = dict(values[v] for v in self.arg_set_values[arg_set_id])
        return d

    @property
    def arg_sets(self) -> list[dict]:
        return [self.arg_set(i) for i in range(len(self.arg_set_values))]

    @property
    def slice_name(self) -> list[str]:
        s = self.strings
        return [s[i] if p < 0 else f"{p}{s[i]}" for p, i in zip(self.slice_name_prefix.tolist(), self.slice_name_id.tolist())]

    @property
    def slice_category(self) -> list[str | None]:
        return [None if i < 0 else self.strings[i] for i in self.slice_category_id.tolist()]


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
        return self._on_boottime(clock_id, key, ns, 1)

    def to_boottime_many(self, clock_id: int, seq_id: int, ts: np.ndarray) -> np.ndarray | None:
        """`to_boottime` of consecutive timestamps of one clock on one sequence."""
        key = (clock_id, seq_id if 64 <= clock_id < 128 else 0)
        last = self.incremental.get(key)
        if last is not None:
            ns = last + np.cumsum(ts * self.multiplier[key])
            self.incremental[key] = int(ns[-1])
        else:
            ns = ts * self.multiplier.get(key, 1)
        return self._on_boottime(clock_id, key, ns, len(ts))

    def _on_boottime(self, clock_id: int, key, ns, count: int):
        """`ns` of clock `key` moved onto BOOTTIME; None (and `count` counted) when no snapshot links them."""
        if clock_id == BOOTTIME:
            return ns
        offset = self._offset(key)
        if offset is None:
            self.stats["clock_sync_failure_unknown_source_clock"] += count
            return None
        return ns + offset

    def _offset(self, key) -> int | None:
        offset = self._offsets.get(key)
        if offset is None:
            path = self._path(key)
            if path is None:
                return None
            offset = 0
            for src, dst in path:
                snap = self.snapshots[max(i for i, s in enumerate(self.snapshots) if src in s and dst in s)]
                offset += snap[dst] - snap[src]
            self._offsets[key] = offset
        return offset

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


def _text(value):
    """protobuf hands back a string field that is not valid UTF-8 as bytes; trace_processor reads it lossily."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _annotation(a: pt.DebugAnnotation, seq: _Sequence, out: dict, key: str) -> None:
    kind = a.WhichOneof("value")
    if kind == "string_value_iid":
        out[key] = seq.strings.get(a.string_value_iid, "")
    elif kind is not None and kind not in ("nested_value", "legacy_json_value", "proto_value"):
        out[key] = _text(getattr(a, kind))
    elif a.dict_entries:
        for e in a.dict_entries:
            _annotation(e, seq, out, f"{key}.{_text(e.name) or seq.annotation_names.get(e.name_iid, '')}")
    elif a.array_values:
        for i, e in enumerate(a.array_values):
            _annotation(e, seq, out, f"{key}[{i}]")


def _decode_args(raw: tuple, seq: _Sequence, memo: dict, value_id) -> tuple:
    """An argument set as value ids (`value_id(key, value)`); `memo` keeps each distinct
    annotation's ids, so a set costs a lookup per annotation once its annotations were seen."""
    ids: tuple = ()
    for blob in raw:
        one = memo.get(blob)
        if one is None:
            a = pt.DebugAnnotation.FromString(blob)
            name = _text(a.name) if a.HasField("name") else seq.annotation_names.get(a.name_iid, f"iid_{a.name_iid}")
            pairs: dict = {}
            _annotation(a, seq, pairs, f"debug.{name}")
            one = tuple(value_id(k, v) for k, v in pairs.items())
            if len(memo) < 1 << 18:
                memo[blob] = one
        ids += one
    return ids


def _load_scanner():
    """The C packet scanner, if it was built and agrees with Perfetto's field numbers."""
    if os.environ.get("RBLN_PERFETTO_PURE_PYTHON") == "1":
        return None
    try:
        from . import _packet_scan as scanner
    except ImportError:
        return None
    packet, event = pt.TracePacket.DESCRIPTOR.fields_by_name, pt.TrackEvent.DESCRIPTOR.fields_by_name
    expected = {"P_TIMESTAMP": packet["timestamp"], "P_CLOCK_ID": packet["timestamp_clock_id"],
                "P_SEQUENCE_ID": packet["trusted_packet_sequence_id"], "P_SEQUENCE_FLAGS": packet["sequence_flags"],
                "P_TRACK_EVENT": packet["track_event"], "E_TYPE": event["type"], "E_TRACK_UUID": event["track_uuid"],
                "E_NAME_IID": event["name_iid"], "E_NAME": event["name"], "E_DEBUG_ANNOTATIONS": event["debug_annotations"],
                "E_COUNTER_VALUE": event["counter_value"], "E_DOUBLE_COUNTER_VALUE": event["double_counter_value"]}
    if any(getattr(scanner, k) != f.number for k, f in expected.items()) or scanner.RECORD_SIZE != _RECORD.itemsize:
        return None
    return scanner


# One record per packet from the C scanner (PacketRecord in _packet_scan.c).
_RECORD = np.dtype([
    ("off", "<i8"), ("len", "<i8"), ("ts", "<u8"), ("track", "<u8"), ("name_iid", "<u8"), ("name_prefix", "<i8"),
    ("name_off", "<i8"), ("name_len", "<i8"), ("name_hash", "<u8"), ("args_hash", "<u8"), ("te_off", "<i8"),
    ("te_len", "<i8"), ("counter", "<f8"), ("clock_id", "<u4"), ("seq_id", "<u4"), ("flags", "<u4"), ("type", "<u4"),
    ("simple", "u1"), ("has_track", "u1"), ("has_clock", "u1"), ("has_counter", "u1"), ("has_name_iid", "u1"),
    ("pad", "V3"),
])
_SCANNER = _load_scanner()
_PREFIXED = re.compile(r"(0|[1-9]\d{0,17})(\D.*)?\Z", re.S | re.ASCII)
_ANNOTATION_TAG = tag(F.DEBUG_ANNOTATIONS, 2)


def _count(stats, key: str, n: int) -> None:
    if n:
        stats[key] += n


def _scan(scanner, data: bytes) -> np.ndarray | None:
    if scanner is None:
        return None
    try:
        return np.frombuffer(scanner.scan(data), dtype=_RECORD)
    except ValueError:
        return None


def _inflate(payload: bytes, scanner) -> tuple[bytes, np.ndarray | None, str]:
    """A compressed bundle's packets and their scan (both release the GIL: this runs on a worker)."""
    try:
        inner = zlib.decompress(payload)
    except zlib.error as exc:
        return b"", None, str(exc)
    return inner, _scan(scanner, inner), ""


class _Prefetch:
    """The top level's non-simple packets, parsed ahead; the next compressed bundles are inflated and
    scanned on a worker thread while the reader decodes the current one (at most `window` ahead)."""

    def __init__(self, data: bytes, records: np.ndarray, indices: np.ndarray, scanner, window: int = 2):
        self.data, self.records, self.scanner, self.window = data, records, scanner, window
        self.indices = iter(indices.tolist())
        self.queue: deque = deque()  # (record index, packet, future or None)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.inflating = 0
        self._fill()

    def _fill(self) -> None:
        while self.inflating < self.window and len(self.queue) < 256:
            i = next(self.indices, None)
            if i is None:
                return
            off, length = int(self.records["off"][i]), int(self.records["len"][i])
            p = ViewPacket.FromString(self.data[off:off + length])
            future = None
            if p.compressed_packets:
                future = self.pool.submit(_inflate, p.compressed_packets, self.scanner)
                self.inflating += 1
            self.queue.append((i, p, future))

    def take(self, i: int):
        j, p, future = self.queue.popleft()
        assert j == i, (j, i)
        self.inflating -= future is not None
        self._fill()
        return p, future

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _HashIds:
    """uint64 hash -> id, looked up a column at a time (sorted keys, binary search)."""

    def __init__(self):
        self.keys = np.zeros(0, dtype=np.uint64)
        self.ids = np.zeros(0, dtype=np.int64)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ids of `hashes` (-1 where unknown) and where they are unknown."""
        if not len(self.keys):
            return np.full(len(hashes), -1, dtype=np.int64), np.ones(len(hashes), dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys, hashes), len(self.keys) - 1)
        known = self.keys[pos] == hashes
        return np.where(known, self.ids[pos], -1), ~known

    def add(self, hashes: np.ndarray, ids: np.ndarray) -> None:
        """Merge unknown `hashes` in: linear in the table, so many small additions stay cheap."""
        order = np.argsort(hashes)
        hashes, ids = hashes[order], ids[order]
        at = np.searchsorted(self.keys, hashes)
        self.keys, self.ids = np.insert(self.keys, at, hashes), np.insert(self.ids, at, ids)

    def resolve(self, hashes: np.ndarray, first: np.ndarray, make) -> np.ndarray:
        """ids of sorted unique `hashes`; `make(i)` gives the id of a new hashes[i]. New ones are made in
        the order they first appear (`first`: the row of each), so ids follow file order."""
        ids, unknown = self.lookup(hashes)
        new = np.flatnonzero(unknown)
        new = new[np.argsort(first[new], kind="stable")]
        for u in new.tolist():
            ids[u] = make(u)
        if len(new):
            self.add(hashes[new], ids[new])
        return ids


class _Columns:
    """Event columns in file order: numpy chunks from scanned runs, Python lists from single packets."""

    NAMES = ("ts", "type", "track", "name_prefix", "name_id", "cat_id", "argset")

    def __init__(self):
        self.chunks = {k: [] for k in self.NAMES}
        self.pending = {k: [] for k in self.NAMES}
        self.counter_chunks: list = []
        self.counter_pending: list = []
        self.count = 0

    def add(self, ts, kind, track, name_prefix, name_id, cat_id, argset) -> None:
        for k, v in zip(self.NAMES, (ts, kind, track, name_prefix, name_id, cat_id, argset)):
            self.pending[k].append(v)
        self.count += 1

    def flush(self) -> None:
        if self.pending["ts"]:
            for k in self.NAMES:
                self.chunks[k].append(np.asarray(self.pending[k], dtype=np.uint64 if k == "track" else np.int64))
                self.pending[k] = []
        if self.counter_pending:
            self.counter_chunks.append(np.asarray(self.counter_pending, dtype=np.float64))
            self.counter_pending = []

    def add_arrays(self, columns: dict, counters: np.ndarray) -> None:
        self.flush()
        for k in self.NAMES:
            self.chunks[k].append(columns[k])
        self.counter_chunks.append(counters)
        self.count += len(columns["ts"])

    def column(self, k: str) -> np.ndarray:
        """Column `k` in one array; its chunks are released (each column is taken once)."""
        self.flush()
        parts = self.chunks.pop(k)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64 if k == "track" else np.int64)

    def counters(self) -> np.ndarray:
        self.flush()
        return np.concatenate(self.counter_chunks) if self.counter_chunks else np.zeros(0)


class _Reader:
    """One pass over a trace's packets, in file order, keeping trace_processor's sequence semantics."""

    def __init__(self, path: Path, out: TraceTables, scanner):
        self.path, self.out, self.stats, self.scanner = path, out, out.stats, scanner
        self.clocks = _Clocks(self.stats)
        self.sequences: dict[int, _Sequence] = defaultdict(_Sequence)
        self.generation = 0
        self.event_cache: dict[bytes, tuple] = {}
        self.arg_set_ids: dict[tuple, int] = {}
        self.annotation_memo: dict[int, dict] = {}  # generation -> annotation bytes -> value ids
        self.value_ids: dict[tuple, int] = {}  # (key, type, value) -> value id
        self.string_ids: dict[str, int] = {}
        self.name_hashes = _HashIds()  # inline name (scanner's hash) -> string id
        self.args_hashes: dict[int, _HashIds] = defaultdict(_HashIds)  # per generation: args hash -> arg set id
        self.name_refs: dict[str, tuple[int, int]] = {}
        self.cols = _Columns()
        self.flow_events: list = []  # (event index, flow ids, terminating ids)
        self.top_level_packets = 0

    # ---------------------------------------------------------------- strings
    def intern(self, s: str) -> int:
        i = self.string_ids.get(s)
        if i is None:
            i = self.string_ids[s] = len(self.out.strings)
            self.out.strings.append(s)
        return i

    def name_ref(self, name: str) -> tuple[int, int]:
        ref = self.name_refs.get(name)
        if ref is None:
            m = _PREFIXED.match(name)
            ref = (int(m.group(1)), self.intern(m.group(2))) if m and m.group(2) is not None else (-1, self.intern(name))
            if len(self.name_refs) < 1 << 20:
                self.name_refs[name] = ref
        return ref

    def args_key(self, seq: _Sequence, raw: tuple) -> tuple:
        if self.scanner is None:
            return seq.generation, raw
        field = b"".join(_ANNOTATION_TAG + varint(len(b)) + b for b in raw)
        return seq.generation, self.scanner.hash_bytes(field)

    def arg_set(self, key: tuple, seq: _Sequence, raw) -> int:
        argset = self.arg_set_ids.get(key)
        if argset is None:
            argset = self.arg_set_ids[key] = len(self.out.arg_set_values)
            memo = self.annotation_memo.setdefault(seq.generation, {})
            ids = _decode_args(raw() if callable(raw) else raw, seq, memo, self.value_id)
            keys = {self.out.arg_values[v][0] for v in ids}
            if len(keys) < len(ids):  # a key given twice: the last value wins, in the first one's place
                by_key = {}
                for v in ids:
                    by_key[self.out.arg_values[v][0]] = v
                ids = tuple(by_key.values())
            self.out.arg_set_values.append(ids)
        return argset

    def value_id(self, key: str, value) -> int:
        k = (key, type(value), value)
        vid = self.value_ids.get(k)
        if vid is None:
            vid = self.value_ids[k] = len(self.out.arg_values)
            self.out.arg_values.append((key, value))
        return vid

    # ---------------------------------------------------------------- buffers
    def buffer(self, data: bytes, top_level: bool, records: np.ndarray | None = None) -> None:
        """Every packet of a serialized Trace, compressed bundles expanded in place."""
        if records is None:
            records = _scan(self.scanner, data)
        if records is None:  # no scanner, or malformed: the protobuf parser says how
            packets = _parse(data, self.path, top_level)
            self.top_level_packets += len(packets) if top_level else 0
            for p in packets:
                self.packet(p)
            return
        self.top_level_packets += len(records) if top_level else 0
        simple = (records["simple"] == 1) & ((records["flags"] & _CLEARED) == 0)
        ahead = _Prefetch(data, records, np.flatnonzero(~simple), self.scanner) if top_level else None
        try:
            # Runs of simple packets go column-wise; every other packet (and short runs) one at a time.
            edges = np.flatnonzero(np.diff(simple.astype(np.int8))) + 1
            for i, j in zip(np.r_[0, edges].tolist(), np.r_[edges, len(records)].tolist()):
                if i == j:
                    continue
                if simple[i] and j - i >= 8:
                    self.simple_run(data, records[i:j])
                    continue
                for k, off, length in zip(range(i, j), records["off"][i:j].tolist(), records["len"][i:j].tolist()):
                    if ahead is not None and not simple[k]:
                        self.packet(*ahead.take(k))
                    else:
                        self.packet(ViewPacket.FromString(data[off:off + length]))
        finally:
            if ahead is not None:
                ahead.close()

    def packet(self, p, inflated=None) -> None:
        if p.compressed_packets:
            inner, records, error = inflated.result() if inflated is not None else _inflate(p.compressed_packets, self.scanner)
            if error:
                raise TraceReadError(f"{self.path}: corrupt compressed packets ({error})")
            self.buffer(inner, top_level=False, records=records)
            return
        if p.zstd_compressed_packets:
            self.stats["compressed_packets_unsupported:zstd"] += 1
            return
        stats, out = self.stats, self.out
        seq_id = p.trusted_packet_sequence_id
        seq = self.sequences[seq_id]
        flags = p.sequence_flags
        if flags & _CLEARED or p.incremental_state_cleared:
            self.generation += 1
            self.sequences[seq_id] = seq = _Sequence(True, self.generation)
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
                seq.names.update((e.iid, _text(e.name)) for e in interned.event_names)
                seq.annotation_names.update((e.iid, _text(e.name)) for e in interned.debug_annotation_names)
                seq.strings.update((e.iid, e.str.decode("utf-8", "replace")) for e in interned.debug_annotation_string_values)
                seq.categories.update((e.iid, _text(e.name)) for e in interned.event_categories)
        if p.clock_snapshot:
            self.clocks.add(pt.ClockSnapshot.FromString(p.clock_snapshot), seq_id)
            return
        te = p.track_event
        if not te:
            if p.track_descriptor:
                _track_descriptor(out, pt.TrackDescriptor.FromString(p.track_descriptor))
            elif not (p.interned_data or p.trace_packet_defaults or flags):
                _unsupported(p, stats)
            return
        if flags & _NEEDS_STATE and not seq.valid:
            stats["tokenizer_skipped_packets"] += 1
            return
        ts = self.clocks.to_boottime(p.timestamp_clock_id or seq.clock_id or BOOTTIME, seq_id, p.timestamp)
        if ts is None:
            stats["clock_sync_failure_undeferrable_packet_loss"] += 1
            return
        ev = self.event_cache.get(te)
        if ev is None:
            e = ViewEvent.FromString(te)
            flows = tuple(e.flow_ids) + tuple(e.flow_ids_old)
            ends = tuple(e.terminating_flow_ids) + tuple(e.terminating_flow_ids_old)
            value = e.double_counter_value if e.HasField("double_counter_value") else float(e.counter_value)
            ev = (e.type, e.track_uuid if e.HasField("track_uuid") else None, e.name if e.HasField("name") else None,
                  e.name_iid, tuple(e.debug_annotations), tuple(e.category_iids), tuple(e.categories),
                  flows, ends, value)
            if len(self.event_cache) < 1 << 16:
                self.event_cache[te] = ev
        kind, track, name, name_iid, raw_args, cat_iids, cats, flows, ends, value = ev
        if track is None:
            track = seq.default_track if seq.default_track is not None else 0
        if kind == COUNTER:
            self.cols.counter_pending.append(value)
        elif kind not in (BEGIN, END, INSTANT):
            stats["unsupported_track_event_type"] += 1
            return
        if name is None:
            name = seq.names.get(name_iid, "") if name_iid else ""
        name = _text(name)
        argset = self.arg_set(self.args_key(seq, raw_args), seq, raw_args) if raw_args else -1
        if flows or ends:
            self.flow_events.append((self.cols.count, flows, ends))
        category = ",".join([seq.categories.get(i, "") for i in cat_iids] + [_text(c) for c in cats]) if (cat_iids or cats) else None
        self.cols.add(ts, kind, track, *self.name_ref(name), -1 if category is None else self.intern(category), argset)

    # ---------------------------------------------------------------- scanned runs
    def simple_run(self, data: bytes, r: np.ndarray) -> None:
        """Plain TrackEvent packets (no state changes among them), decoded column-wise."""
        n = len(r)
        keep = np.ones(n, dtype=bool)
        ts = np.zeros(n, dtype=np.int64)
        track = r["track"].copy()
        name_prefix = r["name_prefix"].copy()
        name_id = np.zeros(n, dtype=np.int64)
        argset = np.full(n, -1, dtype=np.int64)
        seq_ids = r["seq_id"]
        kind = r["type"].astype(np.int64)
        known = (kind == BEGIN) | (kind == END) | (kind == INSTANT) | (kind == COUNTER)
        for seq_id in np.unique(seq_ids).tolist():
            idx = np.flatnonzero(seq_ids == seq_id)
            seq = self.sequences[seq_id]
            if not seq.valid:
                needs_state = (r["flags"][idx] & _NEEDS_STATE) != 0
                _count(self.stats, "tokenizer_skipped_packets", int(needs_state.sum()))
                keep[idx[needs_state]] = False
                idx = idx[~needs_state]
            default_clock = seq.clock_id or BOOTTIME
            clock = np.where((r["has_clock"][idx] == 1) & (r["clock_id"][idx] != 0), r["clock_id"][idx], default_clock)
            for clock_id in np.unique(clock).tolist():
                sub = idx[clock == clock_id]
                converted = self.clocks.to_boottime_many(clock_id, seq_id, r["ts"][sub].astype(np.int64))
                if converted is None:
                    self.stats["clock_sync_failure_undeferrable_packet_loss"] += len(sub)
                    keep[sub] = False
                else:
                    ts[sub] = converted
            idx = idx[keep[idx]]
            unknown_type = idx[~known[idx]]
            _count(self.stats, "unsupported_track_event_type", len(unknown_type))
            keep[unknown_type] = False
            idx = idx[known[idx]]
            if seq.default_track is not None:
                no_track = idx[r["has_track"][idx] == 0]
                track[no_track] = seq.default_track
            # Names: inline ones by hash (decoded once each), interned ones by iid.
            inline = idx[r["name_off"][idx] >= 0]
            if len(inline):
                hashes, first, inverse = np.unique(r["name_hash"][inline], return_index=True, return_inverse=True)

                def new_name(u):
                    row = inline[first[u]]
                    off, length = int(r["name_off"][row]), int(r["name_len"][row])
                    return self.intern(data[off:off + length].decode("utf-8", "replace"))

                name_id[inline] = self.name_hashes.resolve(hashes, first, new_name)[inverse.reshape(-1)]
            by_iid = idx[r["name_off"][idx] < 0]
            if len(by_iid):
                iids, inverse = np.unique(r["name_iid"][by_iid], return_inverse=True)
                refs = np.array([self.name_ref(seq.names.get(i, "") if i else "") for i in iids.tolist()],
                                dtype=np.int64).reshape(-1, 2)
                name_prefix[by_iid] = refs[inverse.reshape(-1), 0]
                name_id[by_iid] = refs[inverse.reshape(-1), 1]
            with_args = idx[r["args_hash"][idx] != 0]
            if len(with_args):
                hashes, first, inverse = np.unique(r["args_hash"][with_args], return_index=True, return_inverse=True)
                te_off, te_len = r["te_off"][with_args[first]].tolist(), r["te_len"][with_args[first]].tolist()

                def new_args(u):
                    te = data[te_off[u]:te_off[u] + te_len[u]]
                    return self.arg_set((seq.generation, int(hashes[u])), seq,
                                        lambda: tuple(ViewEvent.FromString(te).debug_annotations))

                argset[with_args] = self.args_hashes[seq.generation].resolve(hashes, first, new_args)[inverse.reshape(-1)]
        sel = np.flatnonzero(keep)
        columns = {"ts": ts[sel], "type": kind[sel], "track": track[sel], "name_prefix": name_prefix[sel],
                   "name_id": name_id[sel], "cat_id": np.full(len(sel), -1, dtype=np.int64), "argset": argset[sel]}
        self.cols.add_arrays(columns, r["counter"][sel][kind[sel] == COUNTER].astype(np.float64))


def read_tables(path: str | os.PathLike, *, scanner="auto") -> TraceTables:
    """Decode a trace. `scanner`: "auto" (the C packet scanner when it is built), or None (pure Python)."""
    path = Path(path)
    out = TraceTables()
    data = path.read_bytes()
    if not data:
        raise TraceReadError(f"{path}: empty file, not a Perfetto trace")
    reader = _Reader(path, out, _SCANNER if scanner == "auto" else scanner)
    try:
        reader.buffer(data, top_level=True)
    except DecodeError as exc:  # a packet that frames well but whose payload does not parse
        what = re.search(r"type '(?:[\w.]*\.)?(\w+)'", str(exc))
        raise TraceReadError(f"{path}: a corrupt {what.group(1) if what else 'packet'} in it, not a well-formed "
                             "Perfetto trace") from None
    if not reader.top_level_packets:
        raise TraceReadError(f"{path}: {_what_it_is(data)}: no trace packets in it")
    del data
    cols = reader.cols
    if cols.count == 0 and not out.tracks and any(k.startswith("unsupported_packet_field:") for k in out.stats):
        found = ", ".join(f"{k.split(':', 1)[1]} x{v}" for k, v in out.stats.items() if k.startswith("unsupported"))
        raise TraceReadError(f"{path}: holds no TrackEvent data this reader understands (found {found}); "
                             "read it with the trace_processor backend")
    _build(out, cols.column("ts"), cols.column("type"), cols.column("track"), cols.column("name_prefix"),
           cols.column("name_id"), cols.column("cat_id"), cols.column("argset"), cols.counters(), reader.flow_events)
    return out


def _track_descriptor(out: TraceTables, d: pt.TrackDescriptor) -> None:
    t = out.tracks.setdefault(d.uuid, Track(d.uuid))
    t.name = _text(d.name or d.static_name) or t.name
    t.parent_uuid = d.parent_uuid if d.HasField("parent_uuid") else None
    t.description = d.description
    if d.HasField("counter"):
        t.is_counter = True
        t.unit = pt.CounterDescriptor.Unit.Name(d.counter.unit) if d.counter.unit else ""


def _use_track(out: TraceTables, uuid: int) -> None:
    """Give the track (and its ancestors first) an id; a parent chain that loops is cut and counted."""
    chain, seen = [], set()
    while uuid is not None:
        t = out.tracks.get(uuid)
        if t is None:
            t = out.tracks[uuid] = Track(uuid, name="Default Track" if uuid == 0 else "")
        if t.id is not None:
            break
        if uuid in seen:
            out.stats["track_descriptor_parent_cycle"] += 1
            chain[-1].parent_uuid = None
            break
        seen.add(uuid)
        chain.append(t)
        uuid = t.parent_uuid
    for t in reversed(chain):
        t.id = len(out.used_tracks)
        out.used_tracks.append(t.uuid)


def _build(out, ts, kinds, tracks, name_prefix, name_id, cat_id, argset, counter_vals, flow_events) -> None:
    """Sort events by time (stable, as trace_processor's sorter) and build slices, counters and flows."""
    import pandas as pd

    names = (name_prefix, name_id, cat_id, argset)
    order = np.argsort(ts, kind="stable")
    # Track ids in order of first use; `codes` numbers the tracks of events in processing order.
    codes, first_used = pd.factorize(tracks[order])
    for uuid in first_used.tolist():
        _use_track(out, uuid)

    is_counter = kinds[order] == COUNTER
    c_idx = order[is_counter]
    counter_rank = np.cumsum(kinds == COUNTER) - 1  # event index -> its value in counter_vals
    out.counter_ts = ts[c_idx]
    out.counter_track = tracks[c_idx]
    out.counter_value = np.asarray(counter_vals, dtype=np.float64)[counter_rank[c_idx]] if len(c_idx) else np.zeros(0)
    del counter_rank, c_idx  # (the temporaries below are sized by the event count: drop each when done)

    ev = order[~is_counter]  # slice events in processing order
    del order
    k = kinds[ev].astype(np.int8)
    trk = codes[~is_counter].astype(np.int32)
    del codes, is_counter
    delta = np.where(k == BEGIN, 1, np.where(k == END, -1, 0)).astype(np.int8)
    # Depth after each event: a running sum of +1/-1 within its track (events grouped by track, stably).
    by_track = _stable_argsort(trk)
    run = np.cumsum(delta[by_track], dtype=np.int32)
    group_start = np.r_[True, trk[by_track][1:] != trk[by_track][:-1]] if len(ev) else np.zeros(0, bool)
    before_group = np.r_[0, run][np.flatnonzero(group_start)]
    depth_after = np.empty(len(ev), dtype=np.int32)
    depth_after[by_track] = run - before_group[np.cumsum(group_start) - 1]
    del by_track, run, group_start, before_group
    if (depth_after < 0).any():
        _build_with_stacks(out, ev, k, tracks[ev], ts, names, flow_events)
        return
    depth_before = depth_after - delta
    del delta

    opens = np.flatnonzero(k != END)  # one slice per BEGIN or INSTANT, ids in processing order
    n = len(opens)
    slice_of_event = np.full(len(ev), -1, dtype=np.int64)
    slice_of_event[opens] = np.arange(n)
    out.slice_ts = ts[ev[opens]]
    out.slice_track = tracks[ev[opens]]
    out.slice_depth = depth_before[opens].astype(np.int64)
    # A BEGIN is closed by the next END of its track at the same level (ordered by track, level, time).
    dur = np.where(k[opens] == INSTANT, 0, -1).astype(np.int64)
    level = np.where(k == END, depth_after, depth_before)
    pairable = np.flatnonzero(k != INSTANT)
    if len(pairable):
        group = trk[pairable] * (int(level.max()) + 1) + level[pairable]
        rank = _stable_argsort(group)
        seq, group = pairable[rank], group[rank]
        begin = k[seq] == BEGIN
        closes = np.flatnonzero(begin[:-1] & ~begin[1:] & (group[1:] == group[:-1]))
        dur[slice_of_event[seq[closes]]] = ts[ev[seq[closes + 1]]] - ts[ev[seq[closes]]]
        del group, rank, seq, begin, closes
    del level, pairable, depth_after, depth_before
    out.slice_dur = dur
    # Parent: the latest earlier slice on the same track one level up.
    parent = np.full(n, -1, dtype=np.int64)
    grouped = _stable_argsort(trk[opens])  # slices by track, in id order within each
    g_track, g_depth = trk[opens][grouped], out.slice_depth[grouped]
    positions = np.arange(n)
    for d in range(1, int(out.slice_depth.max(initial=0)) + 1):
        child = np.flatnonzero(g_depth == d)
        if not len(child):
            continue
        latest = np.maximum.accumulate(np.where(g_depth == d - 1, positions, -1))[child]
        ok = (latest >= 0) & (g_track[np.maximum(latest, 0)] == g_track[child])
        parent[grouped[child[ok]]] = grouped[latest[ok]]
    out.slice_parent = parent
    _slice_names(out, names, ev[opens])
    _flows(out, flow_events, slice_of_event, _positions(ev, len(ts)))


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort; small non-negative keys go through numpy's radix sort (16-bit types)."""
    if len(keys) and 0 <= keys.min() and keys.max() < 1 << 15:
        return np.argsort(keys.astype(np.int16), kind="stable")
    return np.argsort(keys, kind="stable")


def _slice_names(out, names, events: np.ndarray) -> None:
    name_prefix, name_id, cat_id, argset = names
    out.slice_name_prefix = name_prefix[events]
    out.slice_name_id = name_id[events]
    out.slice_category_id = cat_id[events]
    out.slice_arg_set = argset[events]


def _build_with_stacks(out, ev, k, trk, ts, names, flow_events) -> None:
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
    _slice_names(out, names, events)
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
              dict(t.arg_set(a)) if a >= 0 else {})
        for i, (ts, dur, track, name, depth, parent, cat, a) in enumerate(zip(
            t.slice_ts.tolist(), t.slice_dur.tolist(), t.slice_track.tolist(), t.slice_name, t.slice_depth.tolist(),
            t.slice_parent.tolist(), t.slice_category, t.slice_arg_set.tolist()))
    ]
    counters = [Counter(int(a), int(b), float(c)) for a, b, c in zip(t.counter_ts, t.counter_track, t.counter_value)]
    return TraceData(t.tracks, slices, counters, t.flows, t.stats, t.used_tracks)

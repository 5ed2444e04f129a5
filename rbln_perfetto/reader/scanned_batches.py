"""A batch of consecutive plain TrackEvent packets, as the C scanner recorded them, decoded column-wise with numpy:
clocks, names and argument sets resolved once per distinct value rather than once per packet."""

from __future__ import annotations

import numpy as np

from .clocks import BOOTTIME
from ..proto_bytes import COUNTER, INSTANT, SEQ_NEEDS_STATE, SLICE_BEGIN, SLICE_END
from .columns import distinct, values_of
from .packet_view import ViewEvent, ViewPacket
from .read_state import ReadState


def _count(stats, key: str, n: int) -> None:
    if n:
        stats[key] += n


def decode_simple_batch(decoder: ReadState, data: bytes, r: np.ndarray) -> None:
    """Plain TrackEvent packets (no state changes among them; `r`: their scanner records into `data`),
    appended to the decoder's event columns."""
    n = len(r)
    keep = np.ones(n, dtype=bool)
    ts = np.zeros(n, dtype=np.int64)
    track = r["track"].copy()
    name_prefix = r["name_prefix"].copy()
    name_id = np.full(n, -1, dtype=np.int32)  # (-1: no name; ids as narrow as the event columns keep them)
    argset = np.full(n, -1, dtype=np.int32)
    seq_ids = r["seq_id"]
    kind = r["type"].astype(np.int64)
    counter = r["counter"].astype(np.float64)  # (a copy: values are scaled and summed in place)
    known = (kind == SLICE_BEGIN) | (kind == SLICE_END) | (kind == INSTANT) | (kind == COUNTER)
    stats = decoder.stats
    for seq_id in values_of(seq_ids):
        idx = np.flatnonzero(seq_ids == seq_id)
        seq = decoder.sequences[seq_id]
        if not seq.valid:
            needs_state = (r["flags"][idx] & SEQ_NEEDS_STATE) != 0
            _count(stats, "tokenizer_skipped_packets", int(needs_state.sum()))
            keep[idx[needs_state]] = False
            idx = idx[~needs_state]
        default_clock = seq.clock_id or BOOTTIME
        clock = np.where((r["has_clock"][idx] == 1) & (r["clock_id"][idx] != 0), r["clock_id"][idx], default_clock)
        for clock_id in values_of(clock):
            sub = idx[clock == clock_id]
            if not decoder.clocks.has_path(clock_id, seq_id):  # deferred to the end of the file (see decoding)
                decoder.deferred.extend((ViewPacket.FromString(data[off:off + size]), seq_id)
                                        for off, size in zip(r["off"][sub].tolist(), r["len"][sub].tolist()))
                keep[sub] = False
                continue
            converted = decoder.clocks.to_boottime_many(clock_id, seq_id, r["ts"][sub].astype(np.int64))
            if converted is None:
                stats["clock_sync_failure_undeferrable_packet_loss"] += len(sub)
                keep[sub] = False
            else:
                ts[sub] = converted
                if len(converted):
                    decoder.latest_ts = max(decoder.latest_ts, int(converted.max()))
                invalid = sub[converted < 0]  # past int64 (see clocks)
                _count(stats, "track_event_invalid_timestamp", len(invalid))
                keep[invalid] = False
        idx = idx[keep[idx]]
        unknown_type = idx[~known[idx]]
        for row in unknown_type.tolist():  # (rare: a loop)
            decoder.drop_event_of_type(int(kind[row]), int(track[row]) if r["has_track"][row] else seq.default_track)
        keep[unknown_type] = False
        idx = idx[known[idx]]
        ends = idx[kind[idx] == SLICE_END]
        decoder.matched_ends += int(np.count_nonzero((r["args_hash"][ends] != 0) | (r["name_off"][ends] >= 0)
                                                     | (r["name_iid"][ends] != 0)))
        if seq.default_track is not None:
            no_track = idx[r["has_track"][idx] == 0]
            track[no_track] = seq.default_track
        counters = idx[kind[idx] == COUNTER]
        if len(counters):
            dropped = _counter_values(decoder, seq, counters, track, r["has_track"], counter)
            keep[dropped] = False
            idx = idx[keep[idx]]
        # Names: inline ones by hash (decoded once each), interned ones by iid.
        inline = idx[r["name_off"][idx] >= 0]
        if len(inline):

            def new_name(i):
                row = inline[i]
                off, length = int(r["name_off"][row]), int(r["name_len"][row])
                return decoder.intern(data[off:off + length].decode("utf-8", "replace"))

            name_id[inline] = decoder.name_hashes.ids_of(r["name_hash"][inline], new_name)
        by_iid = idx[(r["name_off"][idx] < 0) & (r["name_iid"][idx] != 0)]  # (no name: prefix and id stay -1)
        if len(by_iid):
            iids, _, inverse = distinct(r["name_iid"][by_iid])
            refs = np.array([decoder.name_ref(seq.names.get(i)) for i in iids.tolist()],
                            dtype=np.int64).reshape(-1, 2)
            name_prefix[by_iid] = refs[inverse.reshape(-1), 0]
            name_id[by_iid] = refs[inverse.reshape(-1), 1]
        with_args = idx[r["args_hash"][idx] != 0]
        if len(with_args):

            def new_args(i):
                row = with_args[i]
                te = data[int(r["te_off"][row]):int(r["te_off"][row]) + int(r["te_len"][row])]
                return decoder.arg_set((seq.generation, int(r["args_hash"][row])), seq,
                                       lambda: _annotations(decoder.scanner, te))

            argset[with_args] = decoder.args_hashes[seq.generation].ids_of(r["args_hash"][with_args], new_args)
    columns = {"ts": ts, "type": kind, "track": track, "name_prefix": name_prefix, "name_id": name_id,
               "argset": argset}
    if not keep.all():
        sel = np.flatnonzero(keep)
        columns = {k: v[sel] for k, v in columns.items()}
    columns["cat_id"] = np.full(len(columns["ts"]), -1, dtype=np.int32)
    decoder.columns.add_arrays(columns, counter[keep & (kind == COUNTER)])


def _annotations(scanner, te: bytes) -> tuple:
    """The debug annotations of a scanned TrackEvent, split by the scanner (as protobuf splits them)."""
    split = scanner.annotations(te)
    return tuple(ViewEvent.FromString(te).debug_annotations) if split is None else split


def _counter_values(decoder: ReadState, seq, rows: np.ndarray, track: np.ndarray, has_track: np.ndarray,
                    counter: np.ndarray) -> np.ndarray:
    """`PacketDecoder.counter_value` for the counter events `rows` of one sequence, in place in `counter`;
    the rows dropped (no counter track to go to), counted as the decoder counts them."""
    stats, tracks = decoder.stats, decoder.tables.tracks
    missing = rows[(has_track[rows] == 0)] if seq.default_track is None else rows[:0]
    _count(stats, "track_event_counter_missing_track_uuid", len(missing))
    rows = rows[(has_track[rows] == 1)] if seq.default_track is None else rows
    dropped = [missing]
    for uuid in np.unique(track[rows]).tolist():
        on = rows[track[rows] == uuid]
        t = tracks.get(uuid)
        if t is None or not t.is_counter:
            _count(stats, "track_event_counter_invalid_track_uuid", len(on))
            dropped.append(on)
            continue
        values = counter[on] * t.counter_multiplier
        if t.counter_incremental:  # (cumsum adds one after another, as trace_processor does)
            values = np.cumsum(np.r_[seq.counter_values.get(uuid, 0.0), values])[1:]
            seq.counter_values[uuid] = float(values[-1])
        counter[on] = values
    return np.concatenate(dropped)

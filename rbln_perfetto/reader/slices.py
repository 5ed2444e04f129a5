"""Slices, counters and flows from the decoded event columns: events sorted by time (stable, as
trace_processor's sorter), begin/end paired per track (with numpy; per-track stacks when an SLICE_END
closes nothing), depths and parents, track ids in order of first use, v1 and v2 flows."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..proto_bytes import COUNTER, INSTANT, SLICE_BEGIN, SLICE_END
from .tables import TraceTables, Track


def _assign_track_id(tables: TraceTables, uuid: int) -> None:
    """Give the track (and its ancestors first) an id; a parent chain that loops is cut and counted."""
    chain, seen = [], set()
    while uuid is not None:
        t = tables.tracks.get(uuid)
        if t is None:
            t = tables.tracks[uuid] = Track(uuid, name="Default Track" if uuid == 0 else None)
        if t.id is not None:
            break
        if uuid in seen:
            tables.stats["track_descriptor_parent_cycle"] += 1
            chain[-1].parent_uuid = None
            break
        seen.add(uuid)
        chain.append(t)
        uuid = t.parent_uuid
    for t in reversed(chain):
        t.first_used_as_parent = t is not chain[0]  # (trace_processor then names it without an event name)
        t.id = len(tables.used_tracks)
        tables.used_tracks.append(t.uuid)


def build_slices(tables: TraceTables, ts, kinds, tracks, name_prefix, name_id, cat_id, argset, counter_vals,
                 flow_events) -> None:
    """Sort events by time (stable, as trace_processor's sorter) and build slices, counters and flows."""
    import pandas as pd

    labels = (name_prefix, name_id, cat_id, argset)  # per event: what its slice is called, and its args
    order = np.argsort(ts, kind="stable")
    # Track ids in order of first use; `codes` numbers the tracks of events in processing order.
    codes, first_used = pd.factorize(tracks[order])
    for uuid in first_used.tolist():
        _assign_track_id(tables, uuid)

    is_counter = kinds[order] == COUNTER
    c_idx = order[is_counter]
    counter_rank = np.cumsum(kinds == COUNTER) - 1  # event index -> its value in counter_vals
    tables.counter_ts = ts[c_idx]
    tables.counter_track = tracks[c_idx]
    tables.counter_value = np.asarray(counter_vals, dtype=np.float64)[counter_rank[c_idx]] if len(c_idx) else np.zeros(0)
    del counter_rank, c_idx  # (the temporaries below are sized by the event count: drop each when done)

    ev = order[~is_counter]  # slice events in processing order
    del order
    k = kinds[ev].astype(np.int8)
    trk = codes[~is_counter].astype(np.int32)
    del codes, is_counter
    delta = np.where(k == SLICE_BEGIN, 1, np.where(k == SLICE_END, -1, 0)).astype(np.int8)
    # Depth after each event: a running sum of +1/-1 within its track (events grouped by track, stably).
    by_track = _stable_argsort(trk)
    run = np.cumsum(delta[by_track], dtype=np.int32)
    group_start = np.r_[True, trk[by_track][1:] != trk[by_track][:-1]] if len(ev) else np.zeros(0, bool)
    before_group = np.r_[0, run][np.flatnonzero(group_start)]
    depth_after = np.empty(len(ev), dtype=np.int32)
    depth_after[by_track] = run - before_group[np.cumsum(group_start) - 1]
    del by_track, run, group_start, before_group
    if (depth_after < 0).any():
        _build_with_stacks(tables, ev, k, tracks[ev], ts, labels, flow_events)
        return
    depth_before = depth_after - delta
    del delta

    opens = np.flatnonzero(k != SLICE_END)  # one slice per SLICE_BEGIN or INSTANT, ids in processing order
    n = len(opens)
    slice_of_event = np.full(len(ev), -1, dtype=np.int64)
    slice_of_event[opens] = np.arange(n)
    tables.slice_ts = ts[ev[opens]]
    tables.slice_track = tracks[ev[opens]]
    tables.slice_depth = depth_before[opens].astype(np.int64)
    # A SLICE_BEGIN is closed by the next SLICE_END of its track at the same level (ordered by track, level, time).
    tables.slice_instant = k[opens] == INSTANT
    dur = np.where(tables.slice_instant, 0, -1).astype(np.int64)
    level = np.where(k == SLICE_END, depth_after, depth_before)
    pairable = np.flatnonzero(k != INSTANT)
    if len(pairable):
        group = trk[pairable] * (int(level.max()) + 1) + level[pairable]
        rank = _stable_argsort(group)
        seq, group = pairable[rank], group[rank]
        begin = k[seq] == SLICE_BEGIN
        closes = np.flatnonzero(begin[:-1] & ~begin[1:] & (group[1:] == group[:-1]))
        dur[slice_of_event[seq[closes]]] = ts[ev[seq[closes + 1]]] - ts[ev[seq[closes]]]
        del group, rank, seq, begin, closes
    del level, pairable, depth_after, depth_before
    tables.slice_dur = dur
    # Parent: the latest earlier slice on the same track one level up.
    parent = np.full(n, -1, dtype=np.int64)
    grouped = _stable_argsort(trk[opens])  # slices by track, in id order within each
    g_track, g_depth = trk[opens][grouped], tables.slice_depth[grouped]
    positions = np.arange(n)
    for d in range(1, int(tables.slice_depth.max(initial=0)) + 1):
        child = np.flatnonzero(g_depth == d)
        if not len(child):
            continue
        latest = np.maximum.accumulate(np.where(g_depth == d - 1, positions, -1))[child]
        ok = (latest >= 0) & (g_track[np.maximum(latest, 0)] == g_track[child])
        parent[grouped[child[ok]]] = grouped[latest[ok]]
    tables.slice_parent = parent
    _take_labels(tables, labels, ev[opens])
    _add_flows(tables, flow_events, slice_of_event, _processing_positions(ev, len(ts)))


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort; small non-negative keys go through numpy's radix sort (16-bit types)."""
    if len(keys) and 0 <= keys.min() and keys.max() < 1 << 15:
        return np.argsort(keys.astype(np.int16), kind="stable")
    return np.argsort(keys, kind="stable")


def _take_labels(tables, labels, events: np.ndarray) -> None:
    """The name, category and arg set columns of the slices opened by `events`."""
    name_prefix, name_id, cat_id, argset = labels
    tables.slice_name_prefix = name_prefix[events]
    tables.slice_name_id = name_id[events]
    tables.slice_category_id = cat_id[events]
    tables.slice_arg_set = argset[events]


def _build_with_stacks(tables, ev, k, trk, ts, labels, flow_events) -> None:
    """The general path, for traces with SLICE_END events that close nothing: one stack per track."""
    stacks: dict[int, list[int]] = defaultdict(list)
    rows = {"ts": [], "dur": [], "track": [], "depth": [], "parent": [], "event": []}
    slice_of_event = np.full(len(ev), -1, dtype=np.int64)
    for i, (kind, track) in enumerate(zip(k.tolist(), trk.tolist())):
        stack = stacks[track]
        if kind == SLICE_END:
            if not stack:
                tables.stats["misplaced_end_event"] += 1
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
        if kind == SLICE_BEGIN:
            stack.append(sid)
    events = np.asarray(rows["event"], dtype=np.int64)
    tables.slice_ts = np.asarray(rows["ts"], dtype=np.int64)
    tables.slice_dur = np.asarray(rows["dur"], dtype=np.int64)
    tables.slice_instant = k[slice_of_event >= 0] == INSTANT
    tables.slice_track = np.asarray(rows["track"], dtype=np.uint64)
    tables.slice_depth = np.asarray(rows["depth"], dtype=np.int64)
    tables.slice_parent = np.asarray(rows["parent"], dtype=np.int64)
    _take_labels(tables, labels, events)
    _add_flows(tables, flow_events, slice_of_event, _processing_positions(ev, len(ts)))


def _processing_positions(ev: np.ndarray, n_events: int) -> np.ndarray:
    """Event index -> its position in processing order `ev` (-1 for counters)."""
    pos = np.full(n_events, -1, dtype=np.int64)
    pos[ev] = np.arange(len(ev))
    return pos


def _add_flows(tables, flow_events, slice_of_event, position_of_event) -> None:
    """Flow rows in processing order: flow_ids start or continue a flow, terminating ids end it."""
    open_flows: dict[int, int] = {}
    for pos, flows, ends in sorted((int(position_of_event[i]), f, t) for i, f, t in flow_events):
        sid = int(slice_of_event[pos]) if pos >= 0 else -1
        if sid < 0:
            continue
        for fid in flows:
            if fid in open_flows:
                tables.flows.append((open_flows[fid], sid))
            open_flows[fid] = sid
        for fid in ends:
            if fid in open_flows:
                tables.flows.append((open_flows.pop(fid), sid))



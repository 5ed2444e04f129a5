"""Slices, counters and flows from the decoded event columns: events sorted by time (stable, as
trace_processor's sorter), begin/end paired per track with numpy where that gives what trace_processor's
SliceTracker gives, else the SliceTracker an event at a time (an END that closes nothing, ENDs that carry
a name, categories, args or flows, instants stacked at one time), depths and parents, track ids in order
of first use, v1 and v2 flows."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..proto_bytes import COUNTER, INSTANT, SLICE_BEGIN, SLICE_END
from .columns import distinct
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
            chain[-1].parent_uuid = chain[-1].parent_track = None
            break
        seen.add(uuid)
        chain.append(t)
        uuid = t.shown_parent
    for t in reversed(chain):
        t.first_used_as_parent = t is not chain[0]  # (trace_processor then names it without an event name)
        t.id = len(tables.used_tracks)
        tables.used_tracks.append(t.uuid)


def build_slices(tables: TraceTables, events: dict, counter_vals, flow_events, match_ends: bool = False) -> None:
    """Sort events by time (stable, as trace_processor's sorter) and build slices, counters and flows.
    `events`: the event columns (EventColumns.NAMES), each taken out of the dict when it is first
    used, so that it is freed as soon as it is done with (the caller keeps no other reference).
    `match_ends`: some END event has a name, categories, args or flows (see `_build_with_stacks`)."""
    ts, kinds, tracks = events.pop("ts"), events.pop("type"), events.pop("track")
    order = np.argsort(ts, kind="stable")
    # Track ids in order of first use; `codes` numbers the tracks of events in processing order.
    first_used, _, codes = distinct(tracks[order])
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
    del kinds
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
    # Instants right after an instant at the same time on their track: trace_processor nests each under
    # the one before (an instant stays on its track's stack until a later time).
    in_track = k[by_track]
    stacked = ((in_track[1:] == INSTANT) & (in_track[:-1] == INSTANT) & ~group_start[1:]
               & (ts[ev[by_track[1:]]] == ts[ev[by_track[:-1]]])).any() if len(ev) > 1 else False
    del by_track, run, group_start, before_group, in_track
    if match_ends or stacked or (depth_after < 0).any():
        _build_with_stacks(tables, ev, k, tracks[ev], ts, events, flow_events)
        return
    depth_before = depth_after - delta
    del delta

    opens = np.flatnonzero(k != SLICE_END)  # one slice per SLICE_BEGIN or INSTANT, ids in processing order
    n = len(opens)
    slice_events = ev[opens]
    _take_labels(tables, events, slice_events)
    tables.slice_ts = ts[slice_events]
    tables.slice_track = tracks[slice_events]
    del slice_events, tracks
    tables.slice_depth = depth_before[opens].astype(np.int64)
    tables.slice_instant = k[opens] == INSTANT
    slice_of_event = np.full(len(ev), -1, dtype=np.int32)
    slice_of_event[opens] = np.arange(n, dtype=np.int32)
    # A SLICE_BEGIN is closed by the next SLICE_END of its track at the same level (ordered by track, level, time).
    dur = np.where(tables.slice_instant, 0, -1).astype(np.int64)
    level = np.where(k == SLICE_END, depth_after, depth_before)
    del depth_after, depth_before
    pairable = np.flatnonzero(k != INSTANT).astype(np.int32)
    if len(pairable):
        levels = int(level.max()) + 1
        wide = (int(trk.max()) + 1) * levels >= 1 << 31
        group = trk[pairable].astype(np.int64 if wide else np.int32) * levels + level[pairable]
        del level
        rank = _stable_argsort(group)
        seq, group = pairable[rank], group[rank]
        del rank, pairable
        begin = k[seq] == SLICE_BEGIN
        closes = np.flatnonzero(begin[:-1] & ~begin[1:] & (group[1:] == group[:-1]))
        del begin, group
        opened = slice_of_event[seq[closes]]
        dur[opened] = ts[ev[seq[closes + 1]]] - tables.slice_ts[opened]
        del seq, closes, opened
    tables.slice_dur = dur
    _add_flows(tables, flow_events, slice_of_event, _processing_positions(ev, len(ts), flow_events))
    del ev, slice_of_event
    # Parent: the latest earlier slice on the same track one level up.
    parent = np.full(n, -1, dtype=np.int64)
    slice_trk = trk[opens]
    del trk, opens
    grouped = _stable_argsort(slice_trk)  # slices by track, in id order within each
    g_track, g_depth = slice_trk[grouped], tables.slice_depth[grouped].astype(np.int32)
    del slice_trk
    positions = np.arange(n)
    for d in range(1, int(tables.slice_depth.max(initial=0)) + 1):
        child = np.flatnonzero(g_depth == d)
        if not len(child):
            continue
        latest = np.maximum.accumulate(np.where(g_depth == d - 1, positions, -1))[child]
        ok = (latest >= 0) & (g_track[np.maximum(latest, 0)] == g_track[child])
        parent[grouped[child[ok]]] = grouped[latest[ok]]
    tables.slice_parent = parent


def _stable_argsort(keys: np.ndarray) -> np.ndarray:
    """Stable argsort; small non-negative keys go through numpy's radix sort (16-bit types)."""
    if len(keys) and 0 <= keys.min() and keys.max() < 1 << 15:
        return np.argsort(keys.astype(np.int16), kind="stable")
    return np.argsort(keys, kind="stable")


def _take_labels(tables, labels: dict, events: np.ndarray) -> None:
    """The name, category and arg set columns of the slices opened by `events`, taken out of `labels`."""
    tables.slice_name_prefix = labels.pop("name_prefix")[events]
    tables.slice_name_id = labels.pop("name_id")[events]
    tables.slice_category_id = labels.pop("cat_id")[events]
    tables.slice_arg_set = labels.pop("argset")[events]


def _build_with_stacks(tables, ev, k, trk, ts, labels, flow_events) -> None:
    """The general path, trace_processor's SliceTracker an event at a time, one stack per track: an instant
    is a slice of no duration that stays on the stack until an event at a later time (or a slice at its
    time) pops it; an END completes the innermost incomplete slice whose name and category it matches (a
    null one matches any), which gets the END's args and flows, and leaves the stack when it is on top
    (else when a later event pops it, ending the incomplete slices above it there: `misplaced_end_event`)."""
    strings, stats = tables.strings, tables.stats
    name_prefix, name_id, cat_id, argset = (labels[c] for c in ("name_prefix", "name_id", "cat_id", "argset"))
    stacks: dict[int, list[int]] = defaultdict(list)
    rows = {"ts": [], "dur": [], "track": [], "depth": [], "parent": [], "event": []}
    end_args: dict[int, list[int]] = {}  # slice id -> arg sets of the ENDs that completed it
    slice_of_event = np.full(len(ev), -1, dtype=np.int64)

    def text(i: int) -> int:  # a string id, -1 for null (an empty string is null in trace_processor too)
        return -1 if i < 0 or strings[i] == "" else i

    for i, (kind, track, e) in enumerate(zip(k.tolist(), trk.tolist(), ev.tolist())):
        t = int(ts[e])
        stack = stacks[track]
        _close_stack(stack, rows, t, 0 if kind == INSTANT else -1, stats)
        if kind == SLICE_END:
            name, category = (int(name_prefix[e]), text(int(name_id[e]))), text(int(cat_id[e]))
            at = _matching(stack, rows, name, category, name_prefix, name_id, cat_id, text)
            if at is None:
                stats["misplaced_end_event"] += 1
                continue
            s = stack[at]
            rows["dur"][s] = t - rows["ts"][s]
            slice_of_event[i] = s
            if argset[e] >= 0:
                end_args.setdefault(s, []).append(int(argset[e]))
            if at == len(stack) - 1:
                stack.pop()
            continue
        sid = len(rows["ts"])
        slice_of_event[i] = sid
        for col, v in (("ts", t), ("dur", 0 if kind == INSTANT else -1), ("track", track), ("depth", len(stack)),
                       ("parent", stack[-1] if stack else -1), ("event", e)):
            rows[col].append(v)
        stack.append(sid)
    events = np.asarray(rows["event"], dtype=np.int64)
    tables.slice_ts = np.asarray(rows["ts"], dtype=np.int64)
    tables.slice_dur = np.asarray(rows["dur"], dtype=np.int64)
    tables.slice_instant = k[(slice_of_event >= 0) & (k != SLICE_END)] == INSTANT
    tables.slice_track = np.asarray(rows["track"], dtype=np.uint64)
    tables.slice_depth = np.asarray(rows["depth"], dtype=np.int64)
    tables.slice_parent = np.asarray(rows["parent"], dtype=np.int64)
    _take_labels(tables, labels, events)
    for s, sets in end_args.items():
        tables.slice_arg_set[s] = _merged_arg_set(tables, [int(tables.slice_arg_set[s]), *sets])
    _add_flows(tables, flow_events, slice_of_event, _processing_positions(ev, len(ts), flow_events))


def _close_stack(stack: list, rows: dict, new_ts: int, new_dur: int, stats) -> None:
    """trace_processor's MaybeCloseStack before an event at `new_ts` (`new_dur`: 0 for an instant, -1 for
    a slice that begins or ends): pops the completed slices that end before it (or at it, unless both are
    instants); a completed slice under incomplete ones that ends before it ends them at its end."""
    incomplete_above = False
    i = len(stack) - 1
    while i >= 0:
        s = stack[i]
        dur = rows["dur"][s]
        end = rows["ts"][s] + dur
        if dur == -1:
            incomplete_above = True
        elif incomplete_above:
            if new_ts > end:
                stats["misplaced_end_event"] += 1
                while len(stack) > i + 1:
                    child = stack.pop()
                    rows["dur"][child] = end - rows["ts"][child]
                stack.pop()
                incomplete_above = False
        elif end < new_ts or (end == new_ts and not (dur == 0 and new_dur == 0)):
            stack.pop()  # (the top, as trace_processor pops)
        i -= 1


def _matching(stack, rows, name, category, name_prefix, name_id, cat_id, text):
    """The stack index of the innermost incomplete slice an END of `name` ((prefix, string id)) and
    `category` (string id) matches, or None; a null name or category matches any."""
    for at in range(len(stack) - 1, -1, -1):
        s = stack[at]
        if rows["dur"][s] != -1:
            continue
        e = rows["event"][s]
        if category >= 0 and text(int(cat_id[e])) != category:
            continue
        other = (int(name_prefix[e]), text(int(name_id[e])))
        if name[1] >= 0 and other[1] >= 0 and other != name:
            continue
        return at
    return None


def _merged_arg_set(tables, sets: list[int]) -> int:
    """One argument set holding those of `sets` (-1: none), a key given twice taking its last value."""
    by_key: dict = {}
    for a in sets:
        if a >= 0:
            for v in tables.arg_set_values[a]:
                by_key[tables.arg_values[v][0]] = v
    if not by_key:
        return -1
    tables.arg_set_values.append(tuple(by_key.values()))
    return len(tables.arg_set_values) - 1


def _processing_positions(ev: np.ndarray, n_events: int, flow_events: list) -> dict:
    """{event index: its position in processing order `ev`} of the events that carry flow ids (counters,
    which are not in `ev`, have none)."""
    if not flow_events:
        return {}
    carries = np.zeros(n_events, dtype=bool)
    carries[[i for i, _, _ in flow_events]] = True
    where = np.flatnonzero(carries[ev])
    return dict(zip(ev[where].tolist(), where.tolist()))


def _add_flows(tables, flow_events, slice_of_event, position_of_event) -> None:
    """Flow rows in processing order: flow_ids start or continue a flow, terminating ids end it (an END
    event's flows bind to the slice it ends). Each step links the flow's last slice and this one, the one
    that began first as slice_out (the flow's last one on a tie), as trace_processor's FlowTracker::Step and
    End order them: an END's flow into a slice that began before the flow's last one goes from that slice."""
    open_flows: dict[int, int] = {}
    for pos, flows, ends in sorted((position_of_event.get(i, -1), f, t) for i, f, t in flow_events):
        sid = int(slice_of_event[pos]) if pos >= 0 else -1
        if sid < 0:
            continue
        for fid, closes in [(f, False) for f in flows] + [(f, True) for f in ends]:
            if fid in open_flows:
                source = open_flows[fid]
                tables.flows.append((sid, source) if tables.slice_ts[source] > tables.slice_ts[sid] else (source, sid))
            if closes:
                open_flows.pop(fid, None)
            else:
                open_flows[fid] = sid

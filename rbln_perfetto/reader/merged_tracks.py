"""Sibling tracks that trace_processor merges, placed as its TrackCompressor places them.

A slice track (not a counter) whose descriptor keeps the default SIBLING_MERGE_BEHAVIOR_BY_TRACK_NAME is
"merged" by its parent and its name: every such track with the same parent and the same name at the time
it is first interned (its descriptor's name, else the name of the event that interns it first: none when
a child's event interns it as a parent) belongs to one set. trace_processor gives each set's events
tracks of its own, the track's uuid only a "cookie" (TrackCompressor::GetOrCreateTrackForCookie):

- an event of uuid U goes to the set's track that U holds, else to the first track with no slice open
  (U then holds it), else to a new track;
- a BEGIN opens a slice there (nest count + 1), an END closes one if any (- 1), an INSTANT does both;
- a child track interned for the first time asks for its parent set's first track (created, held by no
  uuid, when the set has none), which is also every child's `parent_id`;
- tracks are created (and get their ids) when first needed, all named as the set.

The embedded reader does the same with new uuids for the set's tracks (`Track.merged`), rewriting the
events' track column before the slices are built; a set with one uuid keeps its uuid's own track (the
placement above gives it one track). Only global tracks are merged here: tracks under a thread or a
process descriptor are refused anyway (`track_names.THREAD_PROCESS_TRACKS`)."""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np

from ..proto_bytes import INSTANT, SLICE_BEGIN, SLICE_END
from .tables import TraceTables, Track

_INF = 1 << 62


def _track(tables: TraceTables, uuid: int) -> Track:
    t = tables.tracks.get(uuid)
    if t is None:  # (an event's track without a descriptor: trace_processor reserves it at first use)
        t = tables.tracks[uuid] = Track(uuid, name="Default Track" if uuid == 0 else None)
    return t


def _intern_positions(tables: TraceTables, first_pos: dict) -> tuple[dict, dict]:
    """({uuid: position of the event that first interns it}, {parent: its children}): a track is interned at
    its own first event, or earlier at a descendant's (parents first)."""
    intern_pos: dict[int, int] = {}
    children: dict[int, set] = defaultdict(set)
    for uuid, pos in first_pos.items():
        seen = set()
        while uuid is not None and uuid not in seen:
            seen.add(uuid)
            if intern_pos.get(uuid, _INF) <= pos:
                break
            intern_pos[uuid] = pos
            t = tables.tracks.get(uuid)
            parent = t.parent_uuid if t is not None else None
            if parent is not None:
                children[parent].add(uuid)
            uuid = parent
    return intern_pos, children


class _SetTracks:
    """The tracks of the merged sets, as trace_processor's TrackCompressor keeps them: per set, a list of
    [holder uuid or None, nest count, the track's new uuid, its index], with the holders' tracks by uuid and
    a heap of the indexes of tracks with no slice open (checked when popped)."""

    def __init__(self, tables: TraceTables, sets: dict):
        self.tables, self.set_of = tables, {u: key for key, members in sets.items() for u in members}
        self.states: dict[tuple, list] = {key: [] for key in sets}
        self.held: dict[tuple, dict] = {key: {} for key in sets}  # set -> {holder uuid: its track}
        self.free: dict[tuple, list] = {key: [] for key in sets}  # set -> heap of indexes with nest 0
        self.free_uuids = (u for u in range(2**64 - 1, 0, -1) if u not in tables.tracks)

    def new(self, key: tuple, cookie) -> list:
        parent = key[0] or None
        uuid = next(self.free_uuids)
        shown = self.first(self.set_of[parent]) if parent in self.set_of else parent
        self.tables.tracks[uuid] = Track(uuid, key[1], parent, merged=True, parent_track=shown)
        state = [cookie, 0, uuid, len(self.states[key])]
        self.states[key].append(state)
        self.held[key][cookie] = state
        heapq.heappush(self.free[key], state[3])
        return state

    def first(self, key: tuple) -> int:
        """TrackCompressor::DefaultTrack: the set's first track (a new one, held by none, if it has none)."""
        return (self.states[key][0] if self.states[key] else self.new(key, None))[2]

    def _first_free(self, key: tuple) -> list | None:
        free, states = self.free[key], self.states[key]
        while free:
            state = states[free[0]]
            if state[1] == 0:
                return state
            heapq.heappop(free)  # (no longer free: pushed again when it is)
        return None

    def place(self, key: tuple, cookie: int, kind: int) -> int:
        """The new uuid of the track an event of `kind` of track `cookie` goes to (GetOrCreateTrackForCookie)."""
        held = self.held[key]
        state = held.get(cookie)
        if state is None:
            state = self._first_free(key)
            if state is not None:
                held.pop(state[0], None)
                state[0] = cookie
                held[cookie] = state
            else:
                state = self.new(key, cookie)
        if kind == SLICE_BEGIN:
            state[1] += 1
        elif kind == SLICE_END and state[1] > 0:
            state[1] -= 1
            if state[1] == 0:
                heapq.heappush(self.free[key], state[3])
        return state[2]


def _merged_sets(tables: TraceTables, order, first_pos, intern_pos, name_prefix, name_id) -> dict:
    """{(parent uuid or 0, name when first interned): its uuids} of the global slice tracks that merge by name,
    the sets of two or more uuids only."""
    strings = tables.strings

    def key_name(uuid: int, t: Track) -> str | None:
        if t.name is not None or uuid == 0:
            return t.name if t.name is not None else "Default Track"
        pos = first_pos.get(uuid)
        if pos is None or intern_pos[uuid] < pos:  # interned as a parent first: no event name
            return None
        e = order[pos]
        i, p = int(name_id[e]), int(name_prefix[e])
        return None if i < 0 else strings[i] if p < 0 else f"{p}{strings[i]}"

    sets: dict[tuple, list] = defaultdict(list)
    for uuid in intern_pos:
        t = _track(tables, uuid)
        if t.mergeable and not t.is_counter and tables.descriptor_owner(uuid) is None:
            sets[(t.parent_uuid or 0, key_name(uuid, t))].append(uuid)
    return {key: members for key, members in sets.items() if len(members) > 1}


def _depth(tables: TraceTables, uuid: int) -> int:
    d, seen = 0, set()
    while uuid is not None and uuid not in seen:
        seen.add(uuid)
        uuid = tables.tracks[uuid].parent_uuid if uuid in tables.tracks else None
        d += 1
    return d


def merge_sibling_tracks(tables: TraceTables, ts, tracks, kinds, name_prefix, name_id) -> np.ndarray:
    """The events' track column with the events of merged sets moved to their sets' tracks (see the module's
    docstring); `tracks` itself when no set has two uuids."""
    if not len(tracks):
        return tracks
    order = np.argsort(ts, kind="stable")
    in_order = tracks[order]
    uuids, first = np.unique(in_order, return_index=True)
    first_pos = dict(zip(uuids.tolist(), first.tolist()))
    intern_pos, children = _intern_positions(tables, first_pos)
    sets = _merged_sets(tables, order, first_pos, intern_pos, name_prefix, name_id)
    if not sets:
        return tracks
    placed = _SetTracks(tables, sets)
    # In processing order: a child's first intern asks its merged parent's set for its first track (root-most
    # first), then an event of a merged track is placed.
    asks: dict[int, list] = defaultdict(list)
    for parent, kids in children.items():
        if parent in placed.set_of:
            for kid in kids:
                asks[intern_pos[kid]].append(parent)
    members = np.flatnonzero(np.isin(in_order, np.asarray(list(placed.set_of), dtype=in_order.dtype)))
    out = tracks.copy()
    kinds_in_order = kinds[order]
    positions = sorted(set(asks) | set(members.tolist()))
    uuid_at, kind_at = in_order[positions].tolist(), kinds_in_order[positions].tolist()
    placements = []
    for pos, uuid, kind in zip(positions, uuid_at, kind_at):
        if pos in asks:
            for parent in sorted(asks[pos], key=lambda u: _depth(tables, u)):
                placed.first(placed.set_of[parent])
        key = placed.set_of.get(uuid)
        if key is not None and kind in (SLICE_BEGIN, SLICE_END, INSTANT):
            placements.append((pos, placed.place(key, uuid, kind)))
    if placements:
        where, new_uuids = zip(*placements)
        out[order[np.asarray(where)]] = np.asarray(new_uuids, dtype=np.uint64)
    # Tracks under a merged parent show its set's first track as their parent.
    for parent, kids in children.items():
        if parent in placed.set_of:
            for kid in kids:
                if kid not in placed.set_of:
                    tables.tracks[kid].parent_track = placed.first(placed.set_of[parent])
    return out

"""What a read trace holds: its tracks and its slice, counter, args and flow columns (`TraceTables`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


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

    # Whole columns as Python lists: slow, for inspection and for comparing the reader's two paths
    # (tests/trace_checks.py); the SQL loader reads the arrays above instead.
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

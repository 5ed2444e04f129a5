"""What a profiled run traces: the `steps`, `calls` and `submodules` selections, parsed and matched.

    steps       denoising steps (transformer calls, numbered from 0 within each pipeline call)
    calls       pipeline calls (numbered from 0 within a `profile()` block; with `RBLN_PROFILER`,
                within the process), e.g. "2:" skips two warm-up calls
    submodules  submodule names; `activate_profiler` in rbln_config still decides for its submodule

Steps and calls take numbers, python-slice style with the end exclusive: "3", "10:12" (10 and 11),
"2:" (2 onwards), ":5" (0 to 4), or a comma-separated list of them ("0,5,9:"). The same values come
from `profile(steps=, calls=, submodules=)`, `RBLN_PROFILER_STEPS` / `_CALLS` / `_SUBMODULES` and
`rbln-perfetto run --profile-steps` / `--profile-calls` / `--profile-submodules`. A bad value is a
`UsageError` of one line naming the accepted syntax.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable

from pipeline.contract import SUBMODULES

from ..errors import UsageError

ENV_STEPS = "RBLN_PROFILER_STEPS"
ENV_CALLS = "RBLN_PROFILER_CALLS"
ENV_SUBMODULES = "RBLN_PROFILER_SUBMODULES"
NUMBERS_SYNTAX = ("a number (3), a slice a:b with the end exclusive (10:12 is 10 and 11; 2: is 2 onwards; "
                  ":5 is 0 to 4), or a comma-separated list of them (0,5,9:)")
_ITEM = re.compile(r"^\s*([0-9]+)?\s*(:)?\s*([0-9]+)?\s*\Z")


@dataclass(frozen=True)
class Numbers:
    """A set of non-negative integers given as half-open spans [start, stop) (stop None: unbounded)."""

    spans: tuple[tuple[int, int | None], ...]
    text: str  # as the user wrote it, normalised

    def __contains__(self, n: int) -> bool:
        return any(start <= n and (stop is None or n < stop) for start, stop in self.spans)

    def __str__(self) -> str:
        return self.text


def parse_numbers(value, what: str) -> Numbers | None:
    """`value` (a string as above, an int, or an iterable of ints; None: everything) as `Numbers`.

    `what` names the setting in the error (`steps`, `RBLN_PROFILER_STEPS`, `--profile-steps`)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad(what, value)
    if isinstance(value, int):
        value = str(value)
    elif not isinstance(value, str):
        try:
            items = list(value)
        except TypeError:
            raise _bad(what, value) from None
        if not items or not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise _bad(what, value)
        value = ",".join(str(i) for i in items)
    spans, parts = [], []
    for item in value.split(","):
        m = _ITEM.match(item)
        if m is None or not (m.group(1) or m.group(2) or m.group(3)) or (m.group(3) and not m.group(2)):
            raise _bad(what, value)
        start = int(m.group(1) or 0)
        if not m.group(2):
            stop = start + 1
        else:
            stop = int(m.group(3)) if m.group(3) else None
        if stop is not None and stop <= start:
            raise _bad(what, value, f"{start}:{stop} is empty")
        spans.append((start, stop))
        parts.append(str(start) if not m.group(2) else f"{m.group(1) or ''}:{m.group(3) or ''}")
    return Numbers(tuple(spans), ",".join(parts))


def _bad(what: str, value, why: str = "") -> UsageError:
    reason = f" ({why})" if why else ""
    return UsageError(f"{what}={value!r} is not a valid selection{reason}; accepted: {NUMBERS_SYNTAX}")


def parse_submodules(value, what: str) -> frozenset[str] | None:
    """Submodule names: an iterable of them, or one comma-separated string; None: every submodule."""
    if value is None:
        return None
    names = value.split(",") if isinstance(value, str) else list(value)
    chosen = frozenset(n.strip() if isinstance(n, str) else n for n in names)
    unknown = sorted(str(n) for n in chosen if n not in SUBMODULES)
    if unknown or not chosen:
        bad = f"unknown {', '.join(unknown)}" if unknown else "no submodule"
        raise UsageError(f"{what}={value!r} names {bad}; accepted: submodule names from "
                         f"{', '.join(SUBMODULES)}, as a list or comma-separated")
    return chosen


@dataclass(frozen=True)
class Selection:
    """What a run traces; None in a field selects everything of it."""

    steps: Numbers | None = None
    calls: Numbers | None = None
    submodules: frozenset[str] | None = None

    @classmethod
    def of(cls, steps=None, calls=None, submodules=None, *, names: Iterable[str] = ("steps", "calls", "submodules"),
           environ=None) -> Selection:
        """Parse the three; one given as None falls back to its environment variable (`RBLN_PROFILER_*`)."""
        environ = os.environ if environ is None else environ
        n_steps, n_calls, n_subs = names
        env = {k: environ.get(k) or None for k in (ENV_STEPS, ENV_CALLS, ENV_SUBMODULES)}
        return cls(
            steps=parse_numbers(steps, n_steps) if steps is not None else parse_numbers(env[ENV_STEPS], ENV_STEPS),
            calls=parse_numbers(calls, n_calls) if calls is not None else parse_numbers(env[ENV_CALLS], ENV_CALLS),
            submodules=(parse_submodules(submodules, n_subs) if submodules is not None
                        else parse_submodules(env[ENV_SUBMODULES], ENV_SUBMODULES)),
        )

    def wants_call(self, call: int) -> bool:
        return self.calls is None or call in self.calls

    def wants_step(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def wants_submodule(self, submodule: str) -> bool:
        return self.submodules is None or submodule in self.submodules


"""Progress display for long exports and trace loads: a tqdm bar on a terminal, nothing elsewhere.

A bar appears only once the work has run for `DELAY_S` seconds, so short exports and loads print
nothing, and only when the stream it would be drawn on is a terminal (`shows_progress`): a pipe, a
file, a CI log or a notebook gets no progress text at all. The bar erases itself when the work ends.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Iterator

DELAY_S = 1.0  # work shorter than this shows nothing
_TICK_S = 0.5  # how often an activity without a count redraws its elapsed time


def shows_progress(stream) -> bool:
    """Whether progress is drawn on `stream`: only when it is a terminal (False for a pipe, a file, a
    closed stream or an object without `isatty`)."""
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _NoProgress:
    """What a bar is when nothing is shown: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with diffusers; without it, no progress is shown
        return None
    return tqdm


def progress_bar(total: int, desc: str, *, unit: str = "B", stream=None):
    """A bar of `total` units (bytes by default) titled `desc`, on `stream` (default: stderr at call
    time); `update(n)` advances it, `close()` erases it. A no-op object when `stream` is not a terminal."""
    stream = sys.stderr if stream is None else stream
    tqdm = _tqdm() if shows_progress(stream) else None
    if tqdm is None:
        return _NoProgress()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, unit_divisor=1024 if unit == "B" else 1000,
                delay=DELAY_S, file=stream, leave=False, dynamic_ncols=True)


@contextmanager
def activity(desc: str, *, stream=None) -> Iterator[None]:
    """For work that cannot count its progress (a trace load inside a backend): after `DELAY_S` on a
    terminal, `desc` and the time so far, redrawn from a background thread until the block ends."""
    stream = sys.stderr if stream is None else stream
    tqdm = _tqdm() if shows_progress(stream) else None
    if tqdm is None:
        yield
        return
    done = threading.Event()

    def draw() -> None:
        if done.wait(DELAY_S):
            return
        bar = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", file=stream, leave=False)
        try:
            while not done.wait(_TICK_S):
                bar.refresh()
        finally:
            bar.close()

    thread = threading.Thread(target=draw, name="rbln-perfetto-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()

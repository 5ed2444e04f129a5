"""User ranges, like NVTX: `with rbln_perfetto.range("cfg sweep", guidance=7.0): ...`.

Inside a profiled block (a `profile()` block, or a pipeline call profiled by `RBLN_PROFILER`) a
range records its name, its keyword arguments and its start and end on the host's monotonic clock
(the capture's clock) as one capture record, written when the range ends. The export draws it as a
slice on the `Ranges` track of root device 0 in `aggregate.pb`, nested as the code nests, with the
arguments as slice args; the `ranges` report gives each range's time and the device time inside it.

Outside a profiled block a range costs a global and a context-variable read, and writes nothing.
Ranges are meant to be opened and closed on one thread: ranges of two threads that overlap
without nesting share the one track and would pair up wrongly.
"""

from __future__ import annotations

import functools
import numbers
import time

from .. import rbln_capture_pb2 as pb
from .activation import current_writer
from ..errors import UsageError

INT64 = 1 << 63


def range_arg(name: str, value) -> pb.RangeArg:
    """One argument as the capture holds it: bools, integers (int64), reals and text keep their type;
    anything else is written as its `str()`."""
    arg = pb.RangeArg(name=name)
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b":
        arg.bool_value = bool(value)
    elif isinstance(value, numbers.Integral) and -INT64 <= int(value) < INT64:
        arg.int_value = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        arg.double_value = float(value)
    else:
        arg.string_value = value if isinstance(value, str) else str(value)
    return arg


class range:  # noqa: N801 - named like the builtin it reads as, as `profile` is
    """A named span of the profiled code, with args; a context manager and a function decorator.

        with rbln_perfetto.range("cfg sweep", guidance=7.0):
            pipe(prompt, guidance_scale=7.0)

        @rbln_perfetto.range("decode")
        def decode(latents): ...

    `name` is positional-only, so any keyword (even `name=`) is an arg. Each `with` uses the object
    once at a time; a decorated function opens a fresh range per call.
    """

    __slots__ = ("name", "args", "_writer", "_start")

    def __init__(self, name: str, /, **args):
        if not isinstance(name, str):
            raise UsageError(f"rbln_perfetto.range name must be a string, got {type(name).__name__} {name!r}")
        self.name = name
        self.args = args
        self._writer = None
        self._start = 0

    def __enter__(self) -> range:
        writer = current_writer()
        if writer is not None:
            self._writer = writer
            self._start = time.monotonic_ns()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        writer = self._writer
        if writer is not None:
            end = time.monotonic_ns()
            self._writer = None
            writer.range(self.name, self._start, end, [range_arg(k, v) for k, v in self.args.items()])
        return False

    def __call__(self, function):
        name, args = self.name, self.args

        @functools.wraps(function)
        def ranged(*a, **kw):
            with range(name, **args):
                return function(*a, **kw)

        return ranged

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.args.items())
        return f"rbln_perfetto.range({self.name!r}{args})"

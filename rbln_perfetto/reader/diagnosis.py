"""What is wrong with a file as a Perfetto trace, in words: the one source of the messages both query
backends give for files that are not traces, empty, cut short, or whose slices never end."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from ..proto_bytes import FieldNumber, VarintError, read_varint, tag

_PACKET_TAG = tag(FieldNumber.TRACE_PACKET, 2)[0]  # Trace.packet, length-delimited: one byte (0x0a)

EMPTY = "empty file, not a Perfetto trace"
UNFINISHED_SLICES = "unfinished_slices"  # the `stats` row the embedded backend adds for slices with dur = -1
NOT_PROTOBUF = "not a Perfetto protobuf trace (its bytes do not parse as TracePackets)"
JSON_TRACE = "a JSON trace (Chrome trace format?); this reader takes Perfetto protobuf traces"
GZIP = "gzip-compressed: decompress it first"
TAR = ("a TAR archive (a Perfetto merge archive, such as `merge`'s ranks.tar?): this reader takes one trace; "
       "read the run's aggregate.pb (the same slices), or the archive with trace_processor or in the UI")
_HEAD = 512  # the bytes a format is told by: a TAR says `ustar` at offset 257 of its first header


def first_framing_error(data) -> tuple[int, str] | None:
    """Where a `Trace` (repeated TracePacket, field 1) stops being well-formed, and why; None if it is.
    `data`: bytes, or an mmap of the file (only the packet headers are read)."""
    pos, size = 0, len(data)
    while pos < size:
        start = pos
        if data[pos] != _PACKET_TAG:
            return start, f"byte {data[pos]:#04x} where a packet should start"
        try:
            length, pos = read_varint(data, pos + 1)
        except VarintError as exc:
            return start, "a packet length cut short" if exc.cut_short else f"a corrupt packet length ({exc})"
        if pos + length > size:
            return start, f"a packet of {length} bytes cut short after {size - pos}"
        pos += length
    return None


def _other_format(head: bytes) -> str | None:
    """The description of a file that starts like another format, or None."""
    from ..naming import CAPTURE_MAGIC as MAGIC

    if head.startswith(MAGIC):
        return "an rbln-perfetto capture, not a trace: export it first with `rbln-perfetto export`"
    if head[:1] in (b"{", b"["):
        return JSON_TRACE
    if head[:2] == b"\x1f\x8b":
        return GZIP
    if head[257:262] == b"ustar":
        return TAR
    return None


def _framing_description(problem: tuple[int, str] | None) -> str:
    if problem is not None and problem[0] > 0:
        return f"a truncated or corrupt Perfetto trace: {problem[1]} at byte offset {problem[0]}"
    return NOT_PROTOBUF


def describe_non_trace(data: bytes) -> str:
    """What `data` (which did not parse as a Trace) looks like: another format, or where it breaks."""
    return _other_format(data[:_HEAD]) or _framing_description(first_framing_error(data))


def trace_file_problem(path: str | os.PathLike, *, json_and_gzip: bool = False) -> str | None:
    """What is wrong with the file at `path` as a Perfetto protobuf trace, in the words the embedded
    reader uses (empty, another format, cut short or corrupt framing); None when its packet framing
    is sound. `json_and_gzip`: such traces, and TAR archives, are fine (trace_processor reads them).

    Reads the file's first bytes and each top-level packet's header, not the packets."""
    path = Path(path)
    if path.stat().st_size == 0:
        return EMPTY
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        other = _other_format(data[:_HEAD])
        if other is not None:
            return None if json_and_gzip and other in (JSON_TRACE, GZIP, TAR) else other
        problem = first_framing_error(data)
    return None if problem is None else _framing_description(problem)


def unfinished_slices_warning(path, count: int) -> str:
    """The one-line warning for a trace with `count` slices that begin and never end (dur = -1)."""
    slices = "1 slice never ends" if count == 1 else f"{count} slices never end"
    return (f"{path}: {slices} (dur = -1): the trace was cut short, or its producer stopped mid-slice; totals "
            "over them are wrong (`select * from slice where dur = -1` lists them)")

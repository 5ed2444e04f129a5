"""One run per output directory: which files in a directory belong to a run, and keeping runs apart.

A run's files are its traces (`0006_transformer_0.pb`, `aggregate.pb`), its capture
(`capture.rblncap`), `run-id.txt` (which run they are), `image.png` when `rbln-perfetto run`
saved one beside them, and every other trace the tool wrote there for that run (a critical-path
overlay `critical-path.pb`, say: `query --files all` reads it as part of the run). A trace says it
was written by the tool in its `system_info` packet (`naming.TRACING_SERVICE`), and which run's file
it is (or was copied from, for an overlay) by its `trace_uuid` (`naming.trace_uuid`): a copy of
another run's trace put beside a run is the user's file, not the run's. Writing a run into a
directory that holds another run's files would mix the two (`ls` order would no longer be run
order), so it is refused unless `overwrite`, which removes those files first and says how many.
Every other file in the directory (a `.pb` of the user's too) is left alone.

Two runs are told apart by their capture's header (run id, host, process, start time): the
directory's `run-id.txt` and its capture name the run it holds. Exporting a capture again into
a directory that holds its own earlier export is the same run, and allowed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt
from google.protobuf.message import DecodeError

from .capture import iter_records
from ..errors import CaptureError, OutputExistsError, VarintError
from ..naming import (AGGREGATE_FILE_NAME, CAPTURE_FILE, IMAGE_FILE, MERGE_ARCHIVE_FILE, RUN_ID_FILE, TRACING_SERVICE,
                      parse_invocation_file_name, trace_uuid)
from ..proto_bytes import FieldNumber, read_varint, tag

_SHOWN = 3  # file names an error lists before "..."
# Where a trace of the tool has its system_info: after its first packets, the track descriptors.
_HEAD_BYTES = 1 << 16
_PACKET_TAG = tag(FieldNumber.TRACE_PACKET, 2)


def run_identity(header) -> str:
    """What tells one run from another: its capture header's run id, host, process and start time."""
    return (f"run {header.run_id} on {header.hostname}, pid {header.pid}, "
            f"started at {header.clock.realtime_ns} ns (wall clock)")


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def tool_trace_uuid(path: Path) -> tuple[int, int] | None:
    """The trace UUID of a trace file whose system_info says this tool wrote it (an export, a merge,
    an overlay copy); None for another file, one without a UUID, or one that cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return None
    pos, by_the_tool, uuid = 0, False, None
    try:
        while head.startswith(_PACKET_TAG, pos):
            size, start = read_varint(head, pos + len(_PACKET_TAG))
            pos = start + size
            if pos > len(head):
                return None
            packet = pt.TracePacket.FromString(head[start:pos])
            if packet.HasField("system_info"):
                by_the_tool = packet.system_info.tracing_service_version.startswith(TRACING_SERVICE)
            elif packet.HasField("trace_uuid"):
                uuid = (packet.trace_uuid.msb, packet.trace_uuid.lsb)
            if uuid is not None and by_the_tool:
                return uuid
            if packet.HasField("track_event") or packet.HasField("compressed_packets"):
                return None  # past where the tool puts them
    except (VarintError, DecodeError):
        pass
    return None


def _is_named_run_file(name: str) -> bool:
    return (name in (AGGREGATE_FILE_NAME, CAPTURE_FILE, RUN_ID_FILE, MERGE_ARCHIVE_FILE)
            or parse_invocation_file_name(name) is not None)


def run_files(out_dir: Path) -> list[Path]:
    """The files of whatever run `out_dir` holds, in name order (none when it is not a directory): the
    run's named files, and each other trace of the tool whose UUID is one of that run's files'
    (an overlay copied from its aggregate, say); a trace of another run copied here is not one."""
    if not out_dir.is_dir():
        return []
    entries = [e.name for e in os.scandir(out_dir) if e.is_file(follow_symlinks=False)]
    names = [n for n in entries if _is_named_run_file(n)]
    extra = [n for n in entries if n.endswith(".pb") and not _is_named_run_file(n)]
    if extra:
        held = {h for h in _held_identities(out_dir) if h}
        ours = {trace_uuid(h, n) for h in held for n in [*names, *extra, AGGREGATE_FILE_NAME]}
        names += [n for n in extra if tool_trace_uuid(out_dir / n) in ours]
    names.sort()
    if names and (out_dir / IMAGE_FILE).is_file():
        names = sorted(names + [IMAGE_FILE])
    return [out_dir / name for name in names]


def _capture_identity(capture: Path) -> str | None:
    """The identity in a capture's header; None when the file has no readable header."""
    records = iter_records(capture)
    try:
        _, record = next(records)
    except (CaptureError, OSError, StopIteration):
        return None
    finally:
        records.close()
    return run_identity(record.header) if record.WhichOneof("kind") == "header" else None


def _held_identities(out_dir: Path) -> set[str | None]:
    """The runs `out_dir` says it holds (None for a capture or run-id.txt that cannot be read)."""
    held: set[str | None] = set()
    marker = out_dir / RUN_ID_FILE
    if marker.is_file():
        try:
            held.add(marker.read_text().strip() or None)
        except (OSError, UnicodeDecodeError):
            held.add(None)
    capture = out_dir / CAPTURE_FILE
    if capture.is_file():
        held.add(_capture_identity(capture))
    return held


def other_run_files(out_dir: Path, identity: str | None = None, keep: Path | None = None) -> list[Path]:
    """The files in `out_dir` of a run other than `identity` (None: a new run, so every run file is
    another's); `keep` (the capture being exported) is never one of them. Files of a run that cannot
    be identified (traces without a run-id.txt or capture) count as another run's."""
    files = run_files(out_dir)
    if keep is not None and keep.exists():
        files = [f for f in files if not os.path.samefile(f, keep)]
    if not files or (identity is not None and _held_identities(out_dir) == {identity}):
        return []
    return files


def refuse_other_runs(out_dir: Path, identity: str | None = None, keep: Path | None = None) -> None:
    """Raise `OutputExistsError` when `out_dir` holds files of another run; change nothing."""
    others = other_run_files(out_dir, identity, keep)
    if others:
        shown = ", ".join(f.name for f in others[:_SHOWN]) + (", ..." if len(others) > _SHOWN else "")
        raise OutputExistsError(
            f"{out_dir} already holds {_files(len(others))} of another run ({shown}); mixing two runs in one "
            "directory breaks `ls` order = run order: write into an empty directory, or pass --force "
            "(Python: overwrite=True) to remove that run's files first"
        )


def claim_run_directory(out_dir: Path, identity: str | None, *, overwrite: bool, keep: Path | None = None) -> list[Path]:
    """Make `out_dir` hold run `identity` (None: a new run whose capture is yet to be written).

    Another run's files are refused (`OutputExistsError`, nothing changed), or with `overwrite`
    removed, with one line on stderr saying how many. Returns the removed files. A known
    `identity` is recorded in `run-id.txt` so that a later export can tell this run's files.
    """
    removed: list[Path] = []
    if overwrite:
        for path in other_run_files(out_dir, identity, keep):
            path.unlink(missing_ok=True)
            removed.append(path)
        if removed:
            print(f"rbln-perfetto: removed {_files(len(removed))} of an earlier run from {out_dir}", file=sys.stderr)
    else:
        refuse_other_runs(out_dir, identity, keep)
    if identity is not None:
        marker = out_dir / RUN_ID_FILE
        if not marker.is_file() or marker.read_text().strip() != identity:
            marker.write_text(identity + "\n")
    return removed

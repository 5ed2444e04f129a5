"""One Perfetto trace file, written atomically: to a hidden temporary file, renamed on commit.

A reader never sees a half-written trace under its final name: an export that fails (disk full,
interrupt) leaves the files it already committed intact and removes its temporary file.
"""

from __future__ import annotations

import os
import re
from collections import deque
from concurrent.futures import Executor, Future, wait
from functools import lru_cache
from pathlib import Path

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..errors import ExportError
from .interning import annotation_names_payload
from ..proto_bytes import (
    CLOCK_INCREMENTAL,
    SEQ_CLEARED,
    SEQ_NEEDS_STATE,
    SEQUENCE_ID,
    FieldNumber,
    f_bytes,
    f_varint,
)
from .tracks import descriptor_packets

try:  # zlib-ng writes the same zlib streams about 1.8x faster than stdlib zlib at the same ratio
    from zlib_ng import zlib_ng as _zlib

    DEFAULT_LEVEL = 5
except ImportError:  # pragma: no cover - zlib-ng is a declared dependency
    import zlib as _zlib

    DEFAULT_LEVEL = 6


def write_failed(exc: OSError, path: Path) -> ExportError:
    return ExportError(f"writing {path.name} in {path.parent} failed: {exc.strerror or exc}; the files "
                       "committed before it are intact and no partial file was left")


def compressed_packet(stream: bytes, level: int | None = None) -> bytes:
    """Framed packets wrapped in one `compressed_packets` packet (zlib, as Perfetto writes them)."""
    data = _zlib.compress(stream, DEFAULT_LEVEL if level is None else level)
    return f_bytes(FieldNumber.TRACE_PACKET, f_bytes(FieldNumber.COMPRESSED_PACKETS, data))


@lru_cache(maxsize=64)
def preamble(devices: tuple, *, with_host: bool) -> bytes:
    """What every file starts with: a cleared sequence whose timestamps default to the incremental
    clock, the debug annotation names, then the track descriptors of `devices` (`DeviceTrack`s).
    The same for every file of a device, so made once."""
    defaults = pt.TracePacketDefaults(timestamp_clock_id=CLOCK_INCREMENTAL)
    body = (
        f_varint(FieldNumber.SEQUENCE_ID, SEQUENCE_ID)
        + f_varint(FieldNumber.SEQUENCE_FLAGS, SEQ_CLEARED)
        + f_bytes(pt.TracePacket.DESCRIPTOR.fields_by_name["trace_packet_defaults"].number, defaults.SerializeToString())
        + f_bytes(FieldNumber.INTERNED_DATA, annotation_names_payload())
    )
    return f_bytes(FieldNumber.TRACE_PACKET, body) + descriptor_packets(devices, with_host=with_host)


def interned_packet(payload: bytes) -> bytes:
    return f_bytes(FieldNumber.TRACE_PACKET, f_varint(FieldNumber.SEQUENCE_ID, SEQUENCE_ID) + f_bytes(FieldNumber.INTERNED_DATA, payload)
                   + f_varint(FieldNumber.SEQUENCE_FLAGS, SEQ_NEEDS_STATE))


_TEMPORARY = re.compile(r"^\.(.+\.(?:pb|tar))\.(\d+)\.tmp$")  # (.tar: the merge archive, `merge_archive`)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another export of this process may be writing it; ours discard their own
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete the temporary files of exports whose process died (SIGKILL, power loss) in `out_dir`."""
    removed = []
    for entry in os.scandir(out_dir):
        m = _TEMPORARY.match(entry.name)
        if m and entry.is_file(follow_symlinks=False) and not _alive(int(m.group(2))):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


class TraceFile:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._tmp = self.temporary(self.path)
        try:
            self._file = open(self._tmp, "wb")
        except BaseException:  # (Ctrl-C right after the file was made leaves no temporary behind)
            self._tmp.unlink(missing_ok=True)
            raise
        self.bytes_written = 0

    @staticmethod
    def temporary(path: Path) -> Path:
        """Where the file for `path` is written until `rename` (after `sync`) puts it in place."""
        return path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def write(self, data: bytes) -> None:
        """Append `data`; a write that fails (a full disk) is an `ExportError` naming the file."""
        try:
            self._file.write(data)
        except OSError as exc:
            raise write_failed(exc, self.path) from exc
        self.bytes_written += len(data)

    def sync(self) -> None:
        """Put the written bytes on disk and close: the file may then be renamed into place."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def rename(self) -> Path:
        os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        try:
            if not self._file.closed:
                self._file.close()  # flushes what is buffered, which fails again on a full disk
        except OSError:
            pass
        finally:
            self._tmp.unlink(missing_ok=True)

    @classmethod
    def started(cls, path: Path, chunks, queue: CommitQueue | None = None) -> TraceFile:
        """A new file for `path` holding `chunks`, and with `queue` handed to it to be committed; a
        failure or Ctrl-C on the way leaves no temporary (once queued, the queue commits or discards it),
        and a file that cannot be made or written is an `ExportError` naming it."""
        f = None
        try:
            f = cls(path)
            for chunk in chunks:
                f.write(chunk)
            if queue is not None:
                queue.put(f)
            return f
        except BaseException as exc:
            if f is not None:
                if queue is None or f not in queue:
                    f.discard()
            else:  # interrupted between the file's creation and `f` naming it
                cls.temporary(path).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise write_failed(exc, path) from exc
            raise


class CommitQueue:
    """Trace files committed in the order they were written, their syncs overlapping on worker threads.

    Syncing on the export's thread would wait for the disk once per file; here each file's flush and
    fsync run on `pool` while the export writes the next ones (the file system commits concurrent
    fsyncs together), and the renames follow in order, so the committed files are always a prefix of
    those written, as they were one by one.
    """

    def __init__(self, pool: Executor, max_pending: int = 64):
        self._pool = pool
        self._pending: deque[tuple[TraceFile, Future]] = deque()
        self._max_pending = max_pending  # open files waiting for the disk, at most

    def put(self, f: TraceFile) -> None:
        """Commit `f`, completely written, once the files put before it are."""
        self._pending.append((f, self._pool.submit(f.sync)))

    def __contains__(self, f: TraceFile) -> bool:
        """Whether `f` is waiting here (to be committed or discarded by the queue, not by its writer)."""
        return any(g is f for g, _ in self._pending)

    def commit_ready(self, *, wait_all: bool = False) -> list[Path]:
        """Rename into place the files whose sync has ended, in order (every file, when `wait_all`; as many as
        it takes to keep `max_pending` files open otherwise). A file that failed is removed with every file
        after it, and `ExportError` names it."""
        committed = []
        while self._pending and (wait_all or self._pending[0][1].done() or len(self._pending) > self._max_pending):
            f, synced = self._pending[0]  # left in the queue until renamed: an interrupt here discards it
            try:
                synced.result()
                committed.append(f.rename())
            except OSError as exc:
                self.discard()
                raise write_failed(exc, f.path) from exc
            self._pending.popleft()
        return committed

    def settle(self, failure: BaseException) -> None:
        """After `failure`: an error keeps the files written completely before it (committed, as when
        committed one by one); an interrupt (Ctrl-C) keeps none of those not yet committed."""
        try:
            if isinstance(failure, Exception):
                self.commit_ready(wait_all=True)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove every file not yet committed."""
        while self._pending:
            f, synced = self._pending[0]
            wait([synced])  # the file is its sync's until that ends
            f.discard()
            self._pending.popleft()

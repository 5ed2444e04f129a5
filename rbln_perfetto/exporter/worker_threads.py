"""Thread pools for exports and merges, shared by those running at once, ended with the last of them.

Compression (zlib releases the GIL) and file syncs (fsync waits on the disk) run on them while the
export's own thread assembles the next invocation. The first export or merge to `acquire_pools`
makes them (their threads start on first use, in well under a millisecond), and the last to
`release_pools` shuts them down: no thread of the exporter outlives `profile()`, so a later
`open_traces` still finds a process of one thread, which may fork its workers. A forked child
forgets its parent's pools, which it inherits without their threads.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

COMPRESSION_THREADS = 2
# fsyncs in flight at once: the file system commits them together (8 files of a run: 1.6 ms, not 34 ms
# one after another, on this project's test machine)
SYNC_THREADS = 8

_pools: list[ThreadPoolExecutor] = []  # (compression, sync) while some export uses them
_users = 0
_lock = threading.Lock()


def _forget_pools() -> None:
    global _lock, _users
    _lock = threading.Lock()  # another thread may have held it at the fork
    _pools.clear()
    _users = 0


os.register_at_fork(after_in_child=_forget_pools)


def acquire_pools() -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
    """(compression pool, sync pool) for one export or merge, which calls `release_pools` when it ends."""
    global _users
    with _lock:
        if not _pools:
            _pools[:] = [ThreadPoolExecutor(max_workers=COMPRESSION_THREADS, thread_name_prefix="rbln-perfetto-compress"),
                         ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="rbln-perfetto-sync")]
        _users += 1
        return _pools[0], _pools[1]


def release_pools() -> None:
    """One user of the pools is done; the last one ends their threads (after the work queued on them)."""
    global _users
    with _lock:
        _users -= 1
        ending = list(_pools) if _users == 0 else []
        if ending:
            _pools.clear()
    for pool in ending:
        pool.shutdown(wait=True)

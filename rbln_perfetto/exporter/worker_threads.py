"""Thread pools shared by every export of the process, so that an export does not pay for starting threads.

Compression (zlib releases the GIL) and file syncs (fsync waits on the disk) run on them while the
export's own thread assembles the next invocation. A pool is made on first use, and again in a
forked child, which inherits the parent's pool but not its threads.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

COMPRESSION_THREADS = 2
# fsyncs in flight at once: the file system commits them together (8 files of a run: 1.6 ms, not 34 ms
# one after another, on this project's test machine)
SYNC_THREADS = 8

_pools: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def _forget_pools() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork
    _pools.clear()


os.register_at_fork(after_in_child=_forget_pools)


def _pool(name: str, workers: int) -> ThreadPoolExecutor:
    with _lock:
        pool = _pools.get(name)
        if pool is None:
            pool = _pools[name] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"rbln-perfetto-{name}")
        return pool


def compression_pool() -> ThreadPoolExecutor:
    return _pool("compress", COMPRESSION_THREADS)


def sync_pool() -> ThreadPoolExecutor:
    return _pool("sync", SYNC_THREADS)

"""The boundary to the optional C packet scanner (`rbln_perfetto.reader._packet_scan`): loading and checking it,
the record it writes per packet, scanning a buffer, and inflating compressed bundles ahead on a thread.
"""

from __future__ import annotations

import importlib
import os
import warnings
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from .packet_view import ViewPacket

# One record per packet from the C scanner (PacketRecord in _packet_scan.c).
PACKET_RECORD = np.dtype([
    ("off", "<i8"), ("len", "<i8"), ("ts", "<u8"), ("track", "<u8"), ("name_iid", "<u8"), ("name_prefix", "<i8"),
    ("name_off", "<i8"), ("name_len", "<i8"), ("name_hash", "<u8"), ("args_hash", "<u8"), ("te_off", "<i8"),
    ("te_len", "<i8"), ("counter", "<f8"), ("clock_id", "<u4"), ("seq_id", "<u4"), ("flags", "<u4"), ("type", "<u4"),
    ("simple", "u1"), ("has_track", "u1"), ("has_clock", "u1"), ("has_counter", "u1"), ("has_name_iid", "u1"),
    ("pad", "V3"),
])


def _load_scanner():
    """The C packet scanner, if it was built and agrees with Perfetto's field numbers."""
    if os.environ.get("RBLN_PERFETTO_PURE_PYTHON") == "1":
        return None
    try:
        scanner = importlib.import_module("._packet_scan", __package__)  # (names the module when it is missing)
    except ImportError as e:
        # Said once, not silently: an install without a C compiler works, only slower.
        warnings.warn(f"rbln-perfetto: the C packet scanner is not built ({e}); traces are read by the pure-Python "
                      "path (same tables, slower). Reinstall where a C compiler is present to build it.",
                      RuntimeWarning, stacklevel=2)
        return None
    packet, event = pt.TracePacket.DESCRIPTOR.fields_by_name, pt.TrackEvent.DESCRIPTOR.fields_by_name
    expected = {"P_TIMESTAMP": packet["timestamp"], "P_CLOCK_ID": packet["timestamp_clock_id"],
                "P_SEQUENCE_ID": packet["trusted_packet_sequence_id"], "P_SEQUENCE_FLAGS": packet["sequence_flags"],
                "P_TRACK_EVENT": packet["track_event"], "E_TYPE": event["type"], "E_TRACK_UUID": event["track_uuid"],
                "E_NAME_IID": event["name_iid"], "E_NAME": event["name"], "E_DEBUG_ANNOTATIONS": event["debug_annotations"],
                "E_COUNTER_VALUE": event["counter_value"], "E_DOUBLE_COUNTER_VALUE": event["double_counter_value"]}
    if any(getattr(scanner, k) != f.number for k, f in expected.items()) or scanner.RECORD_SIZE != PACKET_RECORD.itemsize:
        return None
    if not hasattr(scanner, "annotations"):  # (built before the hash tables and the annotation split moved into it)
        return None
    return scanner


# The loaded C scanner module, or None: not built, disabled by RBLN_PERFETTO_PURE_PYTHON=1, or out of date.
SCANNER = _load_scanner()


def scanner_available() -> bool:
    """Whether `read_tables` takes the C scanner path by default."""
    return SCANNER is not None


def scan_packets(scanner, data: bytes) -> np.ndarray | None:
    """One `PACKET_RECORD` per packet of a serialized Trace; None without a scanner or when it is malformed."""
    if scanner is None:
        return None
    try:
        return np.frombuffer(scanner.scan(data), dtype=PACKET_RECORD)
    except ValueError:
        return None


def inflate_bundle(payload: bytes, scanner) -> tuple[bytes, np.ndarray | None, str]:
    """A compressed bundle's packets, their scan, and a zlib error ("" if none). Both steps release the
    GIL, so this runs on a worker."""
    try:
        inner = zlib.decompress(payload)
    except zlib.error as exc:
        return b"", None, str(exc)
    return inner, scan_packets(scanner, inner), ""


class BundlePrefetcher:
    """The top level's non-simple packets, parsed ahead; the next compressed bundles are inflated and
    scanned on a worker thread while the reader decodes the current one (at most `window` ahead)."""

    def __init__(self, data: bytes, records: np.ndarray, indices: np.ndarray, scanner, window: int = 2):
        self.data, self.records, self.scanner, self.window = data, records, scanner, window
        self.indices = iter(indices.tolist())
        self.queue: deque = deque()  # (record index, packet, future or None)
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.inflating = 0
        self._fill()

    def _fill(self) -> None:
        while self.inflating < self.window and len(self.queue) < 256:
            i = next(self.indices, None)
            if i is None:
                return
            off, length = int(self.records["off"][i]), int(self.records["len"][i])
            p = ViewPacket.FromString(self.data[off:off + length])
            future = None
            if p.compressed_packets:
                future = self.pool.submit(inflate_bundle, p.compressed_packets, self.scanner)
                self.inflating += 1
            self.queue.append((i, p, future))

    def take(self, i: int):
        """Packet `i` (the next one due) and the future of its inflated bundle, or None."""
        j, p, future = self.queue.popleft()
        assert j == i, (j, i)
        self.inflating -= future is not None
        self._fill()
        return p, future

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

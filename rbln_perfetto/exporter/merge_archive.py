"""The run of a merge as a Perfetto merge archive: `RUN_DIR/ranks.tar`, one trace per rank and a manifest.

trace_processor (v58+) and the Perfetto UI open a TAR of several traces as one merged trace when it
holds a `perfetto_manifest` (perfetto.dev/docs/reference/perfetto-manifest, and
docs/analysis/merging-traces): a JSON document, detected by content (it starts with
`{"perfetto_manifest"`), that says which machine each file is and how its clocks relate to another
file's. `merge` writes, beside its own `aggregate.pb`:

    ranks.tar
      perfetto_manifest.json   version 1; trace_time = rank 0's BOOTTIME; one `files` entry per rank
      rank0.pb                 rank 0's aggregate, machine "rank 0"
      rank1.pb                 rank 1's aggregate, machine "rank 1", on its own clock, with
                               clocks {clock MONOTONIC, sync_to {rank0.pb, MONOTONIC}, offset_ns}

- Each rank's trace keeps its own clock: its timestamps are as the rank captured them (no shift of
  ours); the manifest ties its MONOTONIC (the clock the exchanges measured) to rank 0's with
  `offset_ns` = minus the rank's offset (`RankClock.offset_ns` is the rank's clock minus rank 0's; the
  manifest's offset is what the reference reads minus what the file reads). trace_processor reaches
  trace time through each file's own clock snapshots (BOOTTIME <-> MONOTONIC), as the aggregate's
  rewrite does with the same numbers, so the merged trace's timestamps equal the aggregate's.
- Each rank is a machine of its own (`machine.name`): without one, every file is the host machine and
  two ranks' BOOTTIME would be taken for one clock. Each file keeps its own `trace_uuid` (they differ:
  the run identity holds the rank's host and pid) and `system_info` (the rank's host).
- Names and tracks are the aggregate's (`i{rank}_` prefixes, `Rank r / Device d`), so one query reads
  both. The send -> recv flows between ranks are the aggregate's only: trace_processor keeps flows per
  (trace, machine), so a flow between two files would never join.
- A rank missing (no capture) has no member; one cut short (killed) has what it recorded. The
  manifest's `attributes` (namespaced `rbln_perfetto.`, metadata rows `manifest_attribute.*` in
  trace_processor) say which ranks the archive holds, which are missing or cut short, and each rank's
  clock offset, uncertainty and drift as merge measured them.
"""

from __future__ import annotations

import io
import json
import tarfile

from .rank_clocks import RankClock
from ..naming import MERGE_ARCHIVE_FILE

MANIFEST_MEMBER = "perfetto_manifest.json"  # the name the Perfetto UI and `util merge` give it
ATTRIBUTE_PREFIX = "rbln_perfetto."
TRACE_TIME_CLOCK = "BOOTTIME"  # the aggregate's trace clock: rank 0's BOOTTIME
RELATED_CLOCK = "MONOTONIC"  # the clock the rank clock exchanges measured

__all__ = ["MERGE_ARCHIVE_FILE", "MANIFEST_MEMBER", "member_name", "machine_name", "manifest", "archive_bytes",
           "read_archive"]


def member_name(rank: int) -> str:
    """The archive member holding rank `rank`'s trace."""
    return f"rank{rank}.pb"


def machine_name(rank: int) -> str:
    """The machine trace_processor attributes rank `rank`'s trace to."""
    return f"rank {rank}"


def manifest(clocks: dict[int, RankClock], world_size: int, status: dict[int, str]) -> dict:
    """The `perfetto_manifest` document of an archive holding the ranks in `clocks` (rank 0 among them).

    `status`: rank -> one line for each rank missing or cut short (a rank absent from `clocks` is missing)."""
    first = member_name(0)
    files = []
    attributes: dict[str, int | str] = {
        "world_size": world_size,
        "ranks": ",".join(str(r) for r in sorted(clocks)),
        "missing_ranks": ",".join(str(r) for r in range(world_size) if r not in clocks),
        "cut_short_ranks": ",".join(str(r) for r in sorted(clocks) if r in status),
    }
    for rank, clock in sorted(clocks.items()):
        entry: dict = {"path": member_name(rank), "machine": {"name": machine_name(rank)}}
        if rank:
            entry["clocks"] = {"clock": RELATED_CLOCK, "sync_to": {"file": first, "clock": RELATED_CLOCK},
                               "offset_ns": -clock.offset_ns}
            attributes |= {f"rank{rank}.clock_offset_ns": clock.offset_ns,
                           f"rank{rank}.clock_uncertainty_ns": clock.uncertainty_ns,
                           f"rank{rank}.clock_aligned": "yes" if clock.measured else
                           "no: the rank recorded no clock exchange; taken as rank 0's clock"}
            if clock.drift_ns is not None:
                attributes[f"rank{rank}.clock_drift_ns"] = clock.drift_ns
        files.append(entry)
    for rank, line in sorted(status.items()):
        attributes[f"rank{rank}.status"] = line
    return {"perfetto_manifest": {  # (first key: trace_processor detects a manifest by how it starts)
        "version": 1,
        "trace_time": {"clock": TRACE_TIME_CLOCK, "file": first},
        "files": files,
        "attributes": {ATTRIBUTE_PREFIX + k: v for k, v in attributes.items()},
    }}


def archive_bytes(document: dict, members: dict[str, bytes], mtime: int = 0) -> bytes:
    """A TAR of `document` (as `perfetto_manifest.json`, first) and `members` (name -> bytes), in order.

    POSIX ustar without pax or GNU extension headers, which trace_processor's TAR reader refuses (a
    typeflag other than a regular file with a size is 'Unsupported file type'); names stay within the
    100 bytes of the ustar name field. `mtime` (seconds) is every member's: the same run gives the
    same bytes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in [(MANIFEST_MEMBER, json.dumps(document, indent=1).encode() + b"\n"), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def read_archive(path) -> tuple[dict, dict[str, bytes]]:
    """The manifest document and the other members (name -> bytes) of a merge archive."""
    with tarfile.open(path, mode="r:") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    document = json.loads(members.pop(MANIFEST_MEMBER))
    return document, members

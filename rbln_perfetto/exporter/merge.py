"""`rbln-perfetto merge RUN_DIR`: one timeline from the captures of a run split across processes.

A run under torchrun (`rbln_config['ranks']`) leaves one directory per rank, `RUN_DIR/rank{r}/`,
each with its own capture (its clock, its devices, the tensors it sent and received) exported to
its own traces. `merge` puts them on rank 0's clock and writes, into RUN_DIR, every rank's
per-invocation files (sequence indices are the run's, so names do not collide) and one
`aggregate.pb` with a track group per (rank, device): `Rank 1 / Device 1`, and `Rank r / Run`.

- Names: every slice name gets the prefix `i{rank}_`, as RBLN's multi-instance traces name theirs.
- Clocks: a rank's times move by minus one constant, its offset from rank 0 (`rank_clocks.RankClock`);
  the numbers are args of the rank's Run slice (`clock_offset_ns`, `clock_uncertainty_ns`,
  `clock_exchange_offset_ns`, `clock_exchange_uncertainty_ns`, `clock_drift_ns`).
- Flows: each send to another rank gets a flow to the recv that took it (`flow_key`), when both
  ends were captured.
- A rank whose capture is missing, unreadable or cut short (killed): what the others captured,
  and what it recorded before it died, is merged; `MergeResult.problems` names the rank (one line
  each), and the command exits 1 after writing.
- The same run as a Perfetto merge archive, `ranks.tar` (`merge_archive`): each rank's aggregate on
  its own clock, named as here, and a `perfetto_manifest` tying each rank's clock to rank 0's, which
  trace_processor and the Perfetto UI open as one trace with no tool of ours.

It rewrites each rank's own exported packets (track uuids, sequence id, names, clock snapshot and
absolute timestamps, flow ids), so a rank's slices in the merged file are exactly its own.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..recorder.capture import CaptureInfo, read_info
from ..errors import CaptureError, ExportError
from .export import check_writable, export
from .host_events import TRANSFER_FLOW_KEY
from .merge_archive import archive_bytes, manifest, member_name
from .rank_clocks import RankClock, causal_bounds, transfer_starts
from ..naming import AGGREGATE_FILE_NAME, CAPTURE_FILE, MERGE_ARCHIVE_FILE, MERGED, RANK_DIR, parse_invocation_file_name
from ..proto_bytes import CLOCK_BOOTTIME, CLOCK_MONOTONIC, SEQUENCE_ID
from ..recorder.run_directory import claim_run_directory, run_identity
from .trace_file import CommitQueue, TraceFile
from .tracks import RUN_TRACK
from .worker_threads import acquire_pools, release_pools

UUID_STRIDE = 1 << 24  # a rank's track uuids: its own plus rank * this
FLOW_STRIDE = 1 << 48  # a rank's own flow ids (DMA -> command): its own plus rank * this
CROSS_RANK_FLOW = 1 << 62  # a send -> recv flow: this | the transfer's flow key
ORDER_STRIDE = 1000  # top-level tracks: rank r's come after rank r-1's


def rank_dir(run_dir: str | os.PathLike, rank: int) -> Path:
    """Where rank `rank` of a run split across processes writes its capture and traces."""
    return Path(run_dir) / f"rank{rank}"


@dataclass
class MergeResult:
    out_dir: Path
    world_size: int
    clocks: dict[int, RankClock] = field(default_factory=dict)
    invocation_files: list[Path] = field(default_factory=list)
    aggregate_file: Path | None = None
    archive_file: Path | None = None  # the Perfetto merge archive (`ranks.tar`)
    problems: list[str] = field(default_factory=list)  # one line per rank missing or cut short
    flows: int = 0  # send -> recv flows drawn (both ends captured)


class _RankRewrite:
    """Rewrites one rank's exported packets into the merged trace's place for that rank."""

    def __init__(self, rank: int, clock: RankClock, boot_shift: int, paired: set[int], move_clock: bool = True):
        self.rank = rank
        self.clock = clock
        self.boot_shift = boot_shift  # added to the rank's BOOTTIME values
        self.paired = paired  # flow keys whose send and recv are both in the merged trace
        self.move_clock = move_clock  # False: the rank's own clock (the merge archive's members)
        self.keep_provenance = True
        self.prefix = f"i{rank}_"

    def file(self, data: bytes, *, keep_provenance: bool = True) -> bytes:
        """The rewritten packets of one of the rank's files; without `keep_provenance`, minus its system
        info and trace UUID (one trace holds one of each: rank 0's)."""
        self.keep_provenance = keep_provenance
        return self._trace(data).SerializeToString()

    def _trace(self, data: bytes) -> pt.Trace:
        out = pt.Trace()
        for packet in pt.Trace.FromString(data).packet:
            if self._packet(packet):
                out.packet.append(packet)
        return out

    def _packet(self, p: pt.TracePacket) -> bool:
        """Rewrite `p` in place; False to drop it."""
        if p.HasField("compressed_packets"):
            inner = self._trace(zlib.decompress(p.compressed_packets)).SerializeToString()
            p.compressed_packets = zlib.compress(inner, 6)
            return True
        if p.HasField("trace_uuid") or p.HasField("system_info"):
            return self.keep_provenance
        if p.HasField("trusted_packet_sequence_id"):
            p.trusted_packet_sequence_id = SEQUENCE_ID + self.rank
        if p.HasField("timestamp_clock_id") and p.timestamp_clock_id == CLOCK_BOOTTIME:
            p.timestamp += self.boot_shift
        if p.HasField("clock_snapshot") and self.move_clock:
            for c in p.clock_snapshot.clocks:
                if c.clock_id == CLOCK_BOOTTIME:
                    c.timestamp += self.boot_shift
                elif c.clock_id == CLOCK_MONOTONIC:  # onto rank 0's MONOTONIC, consistent with its BOOTTIME
                    c.timestamp -= self.clock.offset_ns
        if p.HasField("interned_data"):
            for entry in p.interned_data.event_names:
                entry.name = self.prefix + entry.name
        if p.HasField("track_descriptor"):
            self._track(p.track_descriptor)
        if p.HasField("track_event"):
            self._event(p.track_event)
        return True

    def _track(self, t: pt.TrackDescriptor) -> None:
        base = self.rank * UUID_STRIDE
        t.uuid += base
        if t.HasField("parent_uuid"):
            t.parent_uuid += base
        else:  # a top-level track: Run, Device i
            t.name = f"Rank {self.rank} / {t.name}"
            t.sibling_order_rank = self.rank * ORDER_STRIDE + t.sibling_order_rank

    def _event(self, e: pt.TrackEvent) -> None:
        own_track = e.track_uuid
        if e.HasField("track_uuid"):
            e.track_uuid += self.rank * UUID_STRIDE
        if e.HasField("name"):
            e.name = self.prefix + e.name
        if e.flow_ids or e.terminating_flow_ids:
            flows = [f + self.rank * FLOW_STRIDE for f in e.flow_ids]
            ends = [f + self.rank * FLOW_STRIDE for f in e.terminating_flow_ids]
            del e.flow_ids[:], e.terminating_flow_ids[:]
            e.flow_ids.extend(flows)
            e.terminating_flow_ids.extend(ends)
        if e.type != pt.TrackEvent.TYPE_SLICE_BEGIN:
            return
        if own_track == RUN_TRACK:
            e.debug_annotations.extend(self.clock.annotations(self.rank))
            return
        args = {a.name: a for a in e.debug_annotations if a.HasField("name")}
        key = args.get(TRANSFER_FLOW_KEY)
        if key is not None and "transfer" in args and key.int_value in self.paired:
            flow = CROSS_RANK_FLOW | key.int_value
            if args["transfer"].string_value == "send":
                e.flow_ids.append(flow)
            else:
                e.terminating_flow_ids.append(flow)


def _rank_dirs(run_dir: Path) -> dict[int, Path]:
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir} is not a directory: merge takes the --out directory of a run split across "
                          "processes (it holds rank0/, rank1/, ...)")
    found = {int(m.group(1)): e for e in sorted(run_dir.iterdir()) if e.is_dir() and (m := RANK_DIR.match(e.name))}
    if not found:
        raise ExportError(f"{run_dir} holds no rank directories (rank0/, rank1/, ...): merge takes the --out "
                          "directory of a run split across processes (torchrun ... rbln-perfetto run --out DIR)")
    return found


def _needs_export(directory: Path, capture: Path) -> bool:
    aggregate = directory / AGGREGATE_FILE_NAME
    return not aggregate.is_file() or aggregate.stat().st_mtime_ns < capture.stat().st_mtime_ns


def _read_ranks(run_dir: Path, found: dict[int, Path]) -> tuple[dict[int, CaptureInfo], dict[int, str], int]:
    """The capture info of each rank found, a line for each rank missing (by rank), and the world size."""
    infos: dict[int, CaptureInfo] = {}
    missing: dict[int, str] = {}
    for rank, directory in found.items():
        capture = directory / CAPTURE_FILE
        if not capture.is_file():
            missing[rank] = f"rank {rank} is missing: {directory} holds no {CAPTURE_FILE}"
            continue
        try:
            infos[rank] = read_info(capture)
        except CaptureError as exc:
            missing[rank] = f"rank {rank} is missing: {exc}"
    if 0 not in infos:
        raise ExportError(missing.get(0, f"rank 0 is missing: {run_dir} has no rank0/ directory")
                          + "; rank 0 drove the run and holds the clock the others are aligned to: nothing merged")
    world_size = max([p.world_size for info in infos.values() for p in info.pipelines] + [max(found) + 1])
    for rank in range(world_size):
        if rank not in infos and rank not in missing:
            missing[rank] = f"rank {rank} is missing: {rank_dir(run_dir, rank)} does not exist"
    return infos, missing, world_size


def _rank_rewrites(infos: dict[int, CaptureInfo], transfers: dict[int, dict],
                   paired: set[int]) -> dict[int, _RankRewrite]:
    """Each rank's rewrite onto rank 0's clock, by rank in order."""
    rank0 = infos[0].header.clock
    boot0 = rank0.boottime_ns - rank0.monotonic_ns
    rewrites = {}
    for rank, info in sorted(infos.items()):
        clock = RankClock.of(info, causal_bounds(rank, transfers[rank], transfers[0]))
        boot = info.header.clock.boottime_ns - info.header.clock.monotonic_ns
        # A time t on this rank's MONOTONIC is t - offset on rank 0's, and on BOOTTIME that plus boot0.
        rewrites[rank] = _RankRewrite(rank, clock, boot0 - clock.offset_ns - boot, paired)
    return rewrites


def _write_merged(run_dir: Path, found: dict[int, Path], rewrites: dict[int, _RankRewrite], world_size: int,
                  status: dict[int, str], start_s: int) -> list[Path]:
    """Every rank's per-invocation files, in sequence order, then the aggregate of all ranks, rewritten
    into `run_dir`, then the merge archive (`status`: a line per rank missing or cut short, for its
    manifest; `start_s`: its members' mtime); returns the paths written, the archive last."""
    files = sorted((parse_invocation_file_name(f.name)[0], f.name, rank)
                   for rank in rewrites for f in found[rank].iterdir() if parse_invocation_file_name(f.name))

    def rewritten(rank: int, name: str, keep_provenance: bool = True, rewrite: _RankRewrite | None = None) -> bytes:
        source = found[rank] / name
        try:
            return (rewrite or rewrites[rank]).file(source.read_bytes(), keep_provenance=keep_provenance)
        except (OSError, DecodeError, zlib.error) as exc:
            raise ExportError(f"reading {source} to merge it failed: {getattr(exc, 'strerror', None) or exc}; "
                              "the merged files written before it are intact") from exc

    def archive() -> bytes:
        # Each rank on its own clock (no shift, no snapshot moved) and without the flows to other ranks
        # (trace_processor keeps flows per trace file and machine: they could not join); the manifest
        # ties the clocks. Each keeps its system info and trace UUID: it is a trace of its own.
        own = {r: _RankRewrite(r, w.clock, 0, set(), move_clock=False) for r, w in rewrites.items()}
        members = {member_name(r): rewritten(r, AGGREGATE_FILE_NAME, rewrite=own[r]) for r in own}
        document = manifest({r: w.clock for r, w in rewrites.items()}, world_size, status)
        return archive_bytes(document, members, mtime=start_s)

    return _write_in_order([
        *((run_dir / name, lambda name=name, rank=rank: [rewritten(rank, name)]) for _, name, rank in files),
        (run_dir / AGGREGATE_FILE_NAME,
         lambda: [rewritten(r, AGGREGATE_FILE_NAME, keep_provenance=r == 0) for r in rewrites]),
        (run_dir / MERGE_ARCHIVE_FILE, lambda: [archive()]),
    ])


def merge(run_dir: str | os.PathLike, *, overwrite: bool = False) -> MergeResult:
    """Merge the ranks of the run in `run_dir` into its per-invocation files and `aggregate.pb`."""
    run_dir = Path(run_dir)
    found = _rank_dirs(run_dir)
    infos, missing, world_size = _read_ranks(run_dir, found)
    result = MergeResult(run_dir, world_size, problems=[missing[r] for r in sorted(missing)])
    status = dict(missing)  # rank -> its line, for the archive's manifest
    for rank, info in infos.items():
        if info.end is None:
            status[rank] = (f"rank {rank}'s capture ends early ({info.status}; the process was killed?): "
                            f"merged the {info.invocations} invocations it recorded")
            result.problems.append(status[rank])
        capture = found[rank] / CAPTURE_FILE
        if _needs_export(found[rank], capture):
            export(capture, found[rank])
    result.problems.sort()

    check_writable(run_dir)  # (and clears what a killed merge left there)
    claim_run_directory(run_dir, MERGED + run_identity(infos[0].header), overwrite=overwrite)
    transfers = {rank: transfer_starts(found[rank] / CAPTURE_FILE) for rank in infos}
    sent = {flow for t in transfers.values() for flow, (direction, _, _) in t.items() if direction == "send"}
    paired = {flow for t in transfers.values() for flow, (direction, _, _) in t.items() if direction == "recv"} & sent
    rewrites = _rank_rewrites(infos, transfers, paired)
    result.clocks = {rank: rewrite.clock for rank, rewrite in rewrites.items()}
    written = _write_merged(run_dir, found, rewrites, world_size, status,
                            infos[0].header.clock.realtime_ns // 1_000_000_000)
    result.archive_file = written.pop()
    result.aggregate_file = written.pop()
    result.invocation_files += written
    result.flows = len(paired)
    return result


def _write_in_order(files) -> list[Path]:
    """Write each (path, parts()) as an atomic trace file, committed in order as export's are: a
    failure keeps the files written completely before it and leaves no temporary."""
    commits = CommitQueue(acquire_pools()[1])
    committed: list[Path] = []
    try:
        for path, parts in files:
            chunks = parts()  # (read and rewritten before the file is made: a read error names its source)
            TraceFile.started(path, chunks, queue=commits)
            committed += commits.commit_ready()
        return committed + commits.commit_ready(wait_all=True)
    except BaseException as exc:
        commits.settle(exc)
        raise
    finally:
        release_pools()

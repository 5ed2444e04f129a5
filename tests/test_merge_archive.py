"""`merge` writes the run as a Perfetto merge archive too (`ranks.tar`): a trace per rank on its own clock,
and a `perfetto_manifest` tying each rank's clock to rank 0's, which trace_processor v58+ and the UI open
as one trace.

No trace_processor binary is at hand, so the manifest is checked against the format's reference, written
here from Perfetto's documentation (perfetto.dev/docs/reference/perfetto-manifest: "Detection and
placement", "Top-level fields", "files", "machine", "clocks", "attributes", "Clock names", "Errors"; and
docs/analysis/merging-traces) and from trace_processor's reader of it
(src/trace_processor/plugins/perfetto_manifest/perfetto_manifest_reader.cc) and of TAR
(src/trace_processor/importers/archive/tar_trace_reader.cc); each member is parsed with the protobuf
classes and read by the embedded backend, then moved onto rank 0's timeline as trace_processor does:
through the member's own clock snapshots (BOOTTIME <-> MONOTONIC) and the manifest's offset edge. With
RBLN_PERFETTO_TP_BIN set, trace_processor itself opens the archive.

The runs are the synthetic captures of `trace_kinds` (the real capture writer, exporter and merge),
rank 1's clocks moved as if it ran on another host: every reading SKEW_NS ahead, and its BOOTTIME a
further BOOT_GAP_NS ahead of its MONOTONIC (another boot, another suspend history).
"""

import json
import os
import re
import shutil
import tarfile
import zlib
from pathlib import Path

import pytest
import trace_kinds
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from rbln_perfetto.cli import main
from rbln_perfetto.exporter.merge import merge
from rbln_perfetto.exporter.merge_archive import MANIFEST_MEMBER, read_archive
from rbln_perfetto.naming import MERGE_ARCHIVE_FILE
from rbln_perfetto.query import open_trace
from rbln_perfetto.recorder import capture as capture_module
from rbln_perfetto.recorder.run_directory import run_files

SKEW_NS = 7_000_000_000
BOOT_GAP_NS = 3_000_000_000

# --- The manifest's reference (perfetto-manifest.md), as a checker --------------------------------------

CLOCK_NAMES = {"REALTIME", "REALTIME_COARSE", "MONOTONIC", "MONOTONIC_COARSE", "MONOTONIC_RAW", "BOOTTIME"}
BOOTTIME, MONOTONIC = 6, 3  # builtin_clock.proto


def manifest_problems(text: str, members: set[str]) -> list[str]:
    """What the reference says is wrong with manifest `text` in an archive of `members` (none: valid)."""
    out = []
    if not re.sub(r"\s", "", text).startswith('{"perfetto_manifest"'):
        out.append("not detected: a manifest's content must start with {\"perfetto_manifest\" (whitespace ignored)")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return out + [f"not JSON: {exc}"]
    meta = doc.get("perfetto_manifest") if isinstance(doc, dict) else None
    if not isinstance(meta, dict) or len(doc) != 1:
        return out + ["the document is a JSON object with a single top-level perfetto_manifest key"]
    if "version" not in meta:
        out.append("missing required field: version")
    elif type(meta["version"]) is not int or meta["version"] != 1:
        out.append(f"unsupported version: {meta['version']!r}. Only version 1 is supported")

    def clock(value, where):
        if value not in CLOCK_NAMES:
            out.append(f"{where}: unknown clock name: {value!r}")

    files = meta.get("files", [])
    if not isinstance(files, list):
        return out + ["files must be an array"]
    paths = [f.get("path") if isinstance(f, dict) else None for f in files]
    for f, path in zip(files, paths):
        if not isinstance(path, str):
            out.append(f"files entries must be objects with a string path: {f!r}")
            continue
        if path not in members:
            out.append(f"files: {path!r} is not a member of the archive")
        if "machine" in f and "machines" in f:
            out.append(f"{path}: machine and machines are mutually exclusive")
        if "machine" in f:
            m = f["machine"]
            if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
                out.append(f"{path}: machine: name must be a non-empty string in an object")
        if "clocks" in f:
            c = f["clocks"]
            if not isinstance(c, dict):
                out.append(f"{path}: clocks must be an object")
                continue
            if "clock" in c:
                clock(c["clock"], f"{path}: clocks.clock")
            sync_to = c.get("sync_to")
            if not isinstance(sync_to, dict):
                out.append(f"{path}: clocks: a sync_to block is required")
            elif not isinstance(sync_to.get("file"), str):
                out.append(f"{path}: clocks: sync_to.file is required")
            else:
                if sync_to["file"] not in paths:
                    out.append(f"{path}: sync_to.file names unknown file {sync_to['file']!r}")
                if "clock" in sync_to:
                    clock(sync_to["clock"], f"{path}: sync_to.clock")
            offset = c.get("offset_ns", 0)
            if type(offset) is not int:
                out.append(f"{path}: offset_ns must be an integer")
            elif not -(2 ** 63) < offset < 2 ** 63:
                out.append(f"{path}: offset_ns is out of range")
    if "trace_time" in meta:
        t = meta["trace_time"]
        if not isinstance(t, dict) or "clock" not in t:
            out.append("trace_time needs a clock")
        else:
            clock(t["clock"], "trace_time.clock")
            if "file" in t and t["file"] not in paths:
                out.append(f"trace_time: file names unknown file {t['file']!r}")
            if "machine" in t and "file" not in t:
                out.append("trace_time: machine requires file")
    if "attributes" in meta:
        a = meta["attributes"]
        if not isinstance(a, dict):
            out.append("attributes must be an object of string or integer values")
        else:
            for key, value in a.items():
                if not key:
                    out.append("attributes: keys must be non-empty")
                if not isinstance(value, str) and type(value) is not int:
                    out.append(f"attributes: {key!r} must be a string or an integer")
    return out


def test_the_checker_refuses_what_the_reference_refuses():
    good = {"perfetto_manifest": {"version": 1, "trace_time": {"clock": "BOOTTIME", "file": "a.pb"},
                                  "files": [{"path": "a.pb", "machine": {"name": "a"}},
                                            {"path": "b.pb", "machine": {"name": "b"},
                                             "clocks": {"clock": "MONOTONIC", "offset_ns": -5,
                                                        "sync_to": {"file": "a.pb", "clock": "MONOTONIC"}}}],
                                  "attributes": {"x.n": 1, "x.s": "s"}}}
    members = {"a.pb", "b.pb"}
    assert manifest_problems(json.dumps(good), members) == []
    bad = json.loads(json.dumps(good))
    meta = bad["perfetto_manifest"]
    meta["version"] = 2
    meta["trace_time"]["clock"] = "BOOTIME"
    meta["files"][1]["clocks"]["sync_to"]["file"] = "ghost.pb"
    meta["files"][1]["clocks"]["offset_ns"] = 1.5
    meta["files"][0]["machine"] = {"name": ""}
    meta["attributes"]["x.f"] = 0.5
    problems = manifest_problems(json.dumps(bad), members)
    assert len(problems) == 6, problems
    assert manifest_problems(json.dumps({"version": 1, "perfetto_manifest": {"version": 1}}), members)  # key order


# --- Runs ---------------------------------------------------------------------------------------------


class _OtherHostWriter(capture_module.CaptureWriter):
    """Rank 1's capture as another host writes it: every clock reading SKEW_NS ahead of rank 0's, and its
    BOOTTIME a further BOOT_GAP_NS ahead of its MONOTONIC. The synthetic run's times are rank 0's."""

    def __init__(self, path, run_id, *args, **kwargs):
        real = capture_module.clock_now

        def skewed():
            c = real()
            return type(c)(monotonic_ns=c.monotonic_ns + SKEW_NS, boottime_ns=c.boottime_ns + SKEW_NS + BOOT_GAP_NS,
                           realtime_ns=c.realtime_ns + SKEW_NS)

        capture_module.clock_now = skewed
        try:
            super().__init__(path, run_id, *args, **kwargs)
        finally:
            capture_module.clock_now = real

    def invocation(self, program_id, ticks, *args, **kwargs):
        super().invocation(program_id, [t + SKEW_NS for t in ticks], *args, **kwargs)

    def transfer(self, t):
        from dataclasses import replace
        super().transfer(replace(t, start_ns=t.start_ns + SKEW_NS, end_ns=t.end_ns + SKEW_NS))

    def clock_sync(self, label, rank, offset_ns, uncertainty_ns, round_trip_ns):
        super().clock_sync(label, rank, offset_ns + SKEW_NS, uncertainty_ns, round_trip_ns)


def _writer(path, run_id, *args, **kwargs):
    cls = _OtherHostWriter if Path(path).parent.name == "rank1" else capture_module.CaptureWriter
    return cls(path, run_id, *args, **kwargs)


def write_ranks(out: Path, monkeypatch) -> list[Path]:
    """The captures of a 2-rank synthetic run into out/rank{0,1}/, rank 1 on another host's clocks."""
    with monkeypatch.context() as m:
        m.setattr(trace_kinds, "CaptureWriter", _writer)
        return trace_kinds.write_run(out, ranks=True)


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    out = tmp_path_factory.mktemp("archive") / "split"
    with pytest.MonkeyPatch.context() as m:
        write_ranks(out, m)
    return out, merge(out)


# --- What the archive holds -----------------------------------------------------------------------------


def _tar_headers(path: Path) -> list[bytes]:
    """The raw 512-byte header blocks of a TAR file, in order (without the end-of-archive zeros)."""
    data, pos, out = path.read_bytes(), 0, []
    while pos + 512 <= len(data) and any(data[pos:pos + 512]):
        head = data[pos:pos + 512]
        out.append(head)
        size = int(head[124:136].rstrip(b"\0 ").decode() or "0", 8)
        pos += 512 + (size + 511) // 512 * 512
    return out


def test_the_archive_lists_the_manifest_and_a_trace_per_rank(merged):
    out, result = merged
    archive = out / MERGE_ARCHIVE_FILE
    assert result.archive_file == archive and archive.is_file()
    with tarfile.open(archive) as tar:
        assert tar.getnames() == [MANIFEST_MEMBER, "rank0.pb", "rank1.pb"]
    # What trace_processor's TAR reader takes: ustar "00" (or GNU) headers, regular files only (a pax
    # header, typeflag 'x', is 'Unsupported file type'), names within the 100-byte name field.
    for head in _tar_headers(archive):
        assert head[257:263] == b"ustar\0" and head[263:265] == b"00"
        assert head[156:157] == b"0"
        assert head[345:500].strip(b"\0") == b""  # no prefix: the name alone


def test_the_manifest_follows_the_reference_and_ties_rank_1_by_the_measured_offset(merged):
    out, result = merged
    with tarfile.open(out / MERGE_ARCHIVE_FILE) as tar:
        text = tar.extractfile(MANIFEST_MEMBER).read().decode()
        names = set(tar.getnames()) - {MANIFEST_MEMBER}
    assert manifest_problems(text, names) == []
    meta = json.loads(text)["perfetto_manifest"]
    assert meta["trace_time"] == {"clock": "BOOTTIME", "file": "rank0.pb"}
    files = {f["path"]: f for f in meta["files"]}
    assert [f["machine"]["name"] for f in meta["files"]] == ["rank 0", "rank 1"]  # a machine per rank
    assert "clocks" not in files["rank0.pb"]
    clocks = files["rank1.pb"]["clocks"]
    assert clocks["clock"] == clocks["sync_to"]["clock"] == "MONOTONIC" and clocks["sync_to"]["file"] == "rank0.pb"
    clock = result.clocks[1]
    # At one instant rank 1 reads T and rank 0 reads T + offset_ns: rank 1 is SKEW_NS ahead.
    assert clocks["offset_ns"] == -clock.offset_ns
    assert abs(clocks["offset_ns"] + SKEW_NS) <= clock.uncertainty_ns
    attributes = meta["attributes"]
    assert attributes["rbln_perfetto.rank1.clock_offset_ns"] == clock.offset_ns
    assert attributes["rbln_perfetto.rank1.clock_uncertainty_ns"] == clock.uncertainty_ns
    assert attributes["rbln_perfetto.ranks"] == "0,1" and attributes["rbln_perfetto.missing_ranks"] == ""


def _packets(data: bytes):
    """Every packet of a trace, those inside compressed packets too (real protobuf parsing)."""
    for p in pt.Trace.FromString(data).packet:
        if p.HasField("compressed_packets"):
            yield from _packets(zlib.decompress(p.compressed_packets))
        else:
            yield p


def _boot_minus_mono(data: bytes) -> int:
    """BOOTTIME - MONOTONIC as the trace's clock snapshots say it (one value: they are read together)."""
    gaps = set()
    for p in _packets(data):
        if p.HasField("clock_snapshot"):
            c = {x.clock_id: x.timestamp for x in p.clock_snapshot.clocks}
            gaps.add(c[BOOTTIME] - c[MONOTONIC])
    assert len(gaps) == 1, gaps
    return gaps.pop()


def _slices(path: Path, where: str = "1") -> list[tuple]:
    with open_trace(path, backend="sqlite") as tr:
        df = tr.query(f"""select s.name, s.ts, s.dur, s.depth, coalesce(p.name, t.name) as top, t.name as track
                          from slice s join track t on s.track_id = t.id left join track p on t.parent_id = p.id
                          where {where} order by s.ts, s.track_id, s.depth, s.name""")
    return list(df.itertuples(index=False, name=None))


def on_rank0_timeline(archive: Path, tmp: Path) -> dict[int, list[tuple]]:
    """rank -> its member's slices read by the embedded backend, their times moved onto the merged
    timeline as trace_processor moves them: BOOTTIME -> MONOTONIC by the member's own snapshots, MONOTONIC ->
    rank 0's by the manifest's offset_ns edge, then rank 0's MONOTONIC -> BOOTTIME (trace time) by rank
    0's snapshots."""
    document, members = read_archive(archive)
    meta = document["perfetto_manifest"]
    reference = meta["trace_time"]["file"]
    boot0 = _boot_minus_mono(members[reference])
    out = {}
    for entry in meta["files"]:
        data = members[entry["path"]]
        shift = 0
        if "clocks" in entry:
            c = entry["clocks"]
            assert (c["clock"], c["sync_to"]["clock"], c["sync_to"]["file"]) == ("MONOTONIC", "MONOTONIC", reference)
            shift = -_boot_minus_mono(data) + c["offset_ns"] + boot0
        path = tmp / entry["path"]
        path.write_bytes(data)
        rank = int(entry["machine"]["name"].split()[1])
        out[rank] = sorted((name, ts + shift, *rest) for name, ts, *rest in _slices(path))
    return out


def test_each_rank_on_its_own_clock_gives_the_aggregates_slices_once_moved_by_the_manifest(merged, tmp_path):
    out, result = merged
    document, members = read_archive(out / MERGE_ARCHIVE_FILE)
    # Each member is a trace of its own: its own trace UUID and system info, its own clock (rank 1's
    # snapshots are its own, BOOT_GAP_NS apart from rank 0's), and no flow to the other rank.
    uuids = set()
    for data in members.values():
        packets = list(_packets(data))
        [uuid] = [(p.trace_uuid.msb, p.trace_uuid.lsb) for p in packets if p.HasField("trace_uuid")]
        uuids.add(uuid)
        assert sum(p.HasField("system_info") for p in packets) == 1
    assert len(uuids) == 2
    # (each capture read its BOOTTIME beside its MONOTONIC: a few microseconds apart)
    gap = _boot_minus_mono(members["rank1.pb"]) - _boot_minus_mono(members["rank0.pb"])
    assert gap == pytest.approx(BOOT_GAP_NS, abs=1_000_000)
    moved = on_rank0_timeline(out / MERGE_ARCHIVE_FILE, tmp_path)
    uncertainty = result.clocks[1].uncertainty_ns
    for rank in (0, 1):
        aggregate = sorted(_slices(out / "aggregate.pb", f"coalesce(p.name, t.name) like 'Rank {rank} / %'"))
        assert len(moved[rank]) == len(aggregate) > 0
        for a, b in zip(moved[rank], aggregate):
            assert (a[0], *a[2:]) == (b[0], *b[2:])  # name, dur, depth, tracks: the aggregate's
            assert abs(a[1] - b[1]) <= (uncertainty if rank else 0)
            assert a[1] == b[1]  # (the same numbers as the aggregate's rewrite: equal, not only close)
    # Unmoved, rank 1 is SKEW_NS + BOOT_GAP_NS off: the manifest is what puts it in place.
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "rank1.pb").write_bytes(members["rank1.pb"])
    raw = _slices(tmp_path / "raw" / "rank1.pb")
    assert min(s[1] for s in raw) - min(s[1] for s in moved[1]) == pytest.approx(SKEW_NS + BOOT_GAP_NS,
                                                                                  abs=uncertainty + 1_000_000)
    with open_trace(tmp_path / "raw" / "rank1.pb", backend="sqlite") as tr:
        assert tr.query("select count(*) as n from flow").n.iloc[0] > 0  # its own DMA -> command flows stay
        ends = tr.query("""select count(*) as n from flow f join slice s on s.id in (f.slice_out, f.slice_in)
                           where s.name like 'i1_send%' or s.name like 'i1_recv%'""").n.iloc[0]
    assert ends == 0  # the cross-rank flows are the aggregate's only


def test_merge_says_where_the_archive_is(tmp_path, monkeypatch, capsys):
    write_ranks(tmp_path, monkeypatch)
    assert main(["merge", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert f"{MERGE_ARCHIVE_FILE}: the same run as a Perfetto merge archive" in stdout
    assert tmp_path / MERGE_ARCHIVE_FILE in run_files(tmp_path)  # --force on another run removes it too


# --- A rank killed, a rank missing ----------------------------------------------------------------------


def test_a_killed_rank_is_in_the_archive_as_far_as_it_got_and_the_manifest_says_so(tmp_path, monkeypatch):
    captures = write_ranks(tmp_path, monkeypatch)
    trace_kinds.cut_short(captures[1])  # killed after its last invocation: no end, no end exchange
    result = merge(tmp_path)
    [problem] = result.problems
    assert "rank 1's capture ends early" in problem
    document, members = read_archive(tmp_path / MERGE_ARCHIVE_FILE)
    assert set(members) == {"rank0.pb", "rank1.pb"}
    text = json.dumps(document)
    assert manifest_problems(text, set(members)) == []
    attributes = document["perfetto_manifest"]["attributes"]
    assert attributes["rbln_perfetto.cut_short_ranks"] == "1" and attributes["rbln_perfetto.missing_ranks"] == ""
    assert attributes["rbln_perfetto.rank1.status"] == problem
    # Aligned by the start exchange it did record, and its slices are the aggregate's.
    assert "rbln_perfetto.rank1.clock_drift_ns" not in attributes
    assert abs(result.clocks[1].offset_ns - SKEW_NS) <= result.clocks[1].uncertainty_ns
    moved = on_rank0_timeline(tmp_path / MERGE_ARCHIVE_FILE, tmp_path)
    for rank in (0, 1):
        aggregate = sorted(_slices(tmp_path / "aggregate.pb", f"coalesce(p.name, t.name) like 'Rank {rank} / %'"))
        assert [(s[0], s[1]) for s in moved[rank]] == [(s[0], s[1]) for s in aggregate]

    # Rank 1's directory gone: the archive holds rank 0 alone, and the manifest names the missing rank.
    shutil.rmtree(tmp_path / "rank1")
    result = merge(tmp_path)
    document, members = read_archive(tmp_path / MERGE_ARCHIVE_FILE)
    assert set(members) == {"rank0.pb"}
    meta = document["perfetto_manifest"]
    assert manifest_problems(json.dumps(document), set(members)) == []
    assert [f["path"] for f in meta["files"]] == ["rank0.pb"]
    assert meta["attributes"]["rbln_perfetto.missing_ranks"] == "1"
    assert meta["attributes"]["rbln_perfetto.world_size"] == 2
    assert meta["attributes"]["rbln_perfetto.rank1.status"] == result.problems[0]
    assert "rank 1 is missing" in result.problems[0]


def test_a_rank_that_recorded_no_clock_exchange_is_tied_as_the_aggregate_takes_it(tmp_path, monkeypatch):
    """No exchange: merge leaves the rank unaligned (its MONOTONIC taken for rank 0's), and so does the archive,
    saying so."""
    captures = write_ranks(tmp_path, monkeypatch)
    kept = [r for _, r in capture_module.iter_records(captures[1]) if r.WhichOneof("kind") != "clock_sync"]
    with open(captures[1], "wb") as f:
        f.write(capture_module.MAGIC)
        for r in kept:
            data = r.SerializeToString()
            f.write(capture_module.varint(len(data)) + data)
    result = merge(tmp_path)
    assert not result.clocks[1].measured
    document, _ = read_archive(tmp_path / MERGE_ARCHIVE_FILE)
    meta = document["perfetto_manifest"]
    assert meta["files"][1]["clocks"]["offset_ns"] == 0
    assert meta["attributes"]["rbln_perfetto.rank1.clock_aligned"].startswith("no: ")
    moved = on_rank0_timeline(tmp_path / MERGE_ARCHIVE_FILE, tmp_path)
    aggregate = sorted(_slices(tmp_path / "aggregate.pb", "coalesce(p.name, t.name) like 'Rank 1 / %'"))
    assert [(s[0], s[1]) for s in moved[1]] == [(s[0], s[1]) for s in aggregate]


# --- trace_processor itself ---------------------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("RBLN_PERFETTO_TP_BIN"), reason="RBLN_PERFETTO_TP_BIN is not set")
def test_trace_processor_opens_the_archive_as_one_trace(merged):
    from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig

    out, result = merged
    config = TraceProcessorConfig(bin_path=os.environ["RBLN_PERFETTO_TP_BIN"])
    tp = TraceProcessor(trace=str(out / MERGE_ARCHIVE_FILE), config=config)
    try:
        q = lambda sql: tp.query(sql).as_pandas_dataframe()  # noqa: E731
        losses = q("select name, value from stats where value > 0 and severity in ('error', 'data_loss')")
        assert losses.empty, losses.to_dict("records")
        assert sorted(q("select name from machine where name is not null").name) == ["rank 0", "rank 1"]
        merged_slices = q("""select s.name, s.ts, s.dur, coalesce(p.name, t.name) as top from slice s
                             join track t on s.track_id = t.id left join track p on t.parent_id = p.id""")
    finally:
        tp.close()
    for rank in (0, 1):
        got = merged_slices[merged_slices.top.str.startswith(f"Rank {rank} / ")]
        aggregate = _slices(out / "aggregate.pb", f"coalesce(p.name, t.name) like 'Rank {rank} / %'")
        assert len(got) == len(aggregate) > 0
        assert sorted(zip(got.name, got.ts)) == sorted((s[0], s[1]) for s in aggregate)


def test_the_embedded_backend_refuses_the_archive_in_one_line_naming_the_aggregate(merged, capsys):
    # One trace per reader: the archive is for trace_processor and the UI; our commands read aggregate.pb.
    out, _ = merged
    for argv in (["report", "idle", str(out / MERGE_ARCHIVE_FILE)],
                 ["open", str(out / MERGE_ARCHIVE_FILE), "--view", "idle", "--no-browser"]):
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "a TAR archive" in err and "aggregate.pb" in err, err
    # trace_processor reads archives: its backend lets the file through to it.
    from rbln_perfetto.reader.diagnosis import trace_file_problem
    assert trace_file_problem(out / MERGE_ARCHIVE_FILE, json_and_gzip=True) is None


@pytest.mark.skipif(not os.environ.get("RBLN_PERFETTO_TP_BIN"), reason="RBLN_PERFETTO_TP_BIN is not set")
def test_the_sql_package_on_the_archive_gives_the_aggregates_commands_and_idle_gaps(merged):
    # The same names and tracks in each member as in the aggregate: the modules read the archive as they
    # read the aggregate (the critical path differs: the cross-rank flows are the aggregate's only).
    out, _ = merged
    sql = {"commands": "INCLUDE PERFETTO MODULE rbln.commands; SELECT rank, device, submodule, sequence_index, "
                       "layer, op, command_index, ts, dur FROM rbln_commands",
           "gaps": "INCLUDE PERFETTO MODULE rbln.idle; SELECT rank, device, kind, ts, dur, cause FROM rbln_idle_gaps"}
    tp_bin = os.environ["RBLN_PERFETTO_TP_BIN"]
    with open_trace(out / "aggregate.pb", backend="sqlite") as a, \
            open_trace(out / MERGE_ARCHIVE_FILE, backend="trace_processor", tp_bin=tp_bin) as b:
        for name, q in sql.items():
            x, y = a.query(q), b.query(q)
            assert len(x) > 0 and sorted(map(tuple, x.values.tolist())) == sorted(map(tuple, y.values.tolist())), name


# --- A real run under torchrun ----------------------------------------------------------------------------

from test_ranks import SKEW_NS as RUN_SKEW_NS, compiles, two  # noqa: E402,F401 (the fixtures, run here once)


@pytest.mark.slow
def test_a_torchrun_run_merged_by_rank_0_leaves_its_archive(two, tmp_path):
    """Rank 1's clocks 7 s ahead (RBLN_TEST_CLOCK_SKEW_NS): the archive ties it back as the aggregate does."""
    out, stdout = two
    assert f"{MERGE_ARCHIVE_FILE}: the same run as a Perfetto merge archive" in stdout
    document, members = read_archive(out / MERGE_ARCHIVE_FILE)
    assert manifest_problems(json.dumps(document), set(members)) == []
    meta = document["perfetto_manifest"]
    offset = meta["attributes"]["rbln_perfetto.rank1.clock_offset_ns"]
    uncertainty = meta["attributes"]["rbln_perfetto.rank1.clock_uncertainty_ns"]
    assert meta["files"][1]["clocks"]["offset_ns"] == -offset and abs(offset - RUN_SKEW_NS) <= uncertainty
    moved = on_rank0_timeline(out / MERGE_ARCHIVE_FILE, tmp_path)
    for rank in (0, 1):
        aggregate = sorted(_slices(out / "aggregate.pb", f"coalesce(p.name, t.name) like 'Rank {rank} / %'"))
        assert len(moved[rank]) == len(aggregate) > 0
        assert [(s[0], s[1], s[2]) for s in moved[rank]] == [(s[0], s[1], s[2]) for s in aggregate]


def test_a_merge_killed_while_writing_the_archive_leaves_nothing_behind_the_next_merge(tmp_path, monkeypatch):
    """The archive is written as the traces are (a temporary renamed into place): what a killed merge left is
    cleared by the next one, and a failure while building it leaves the files committed before it."""
    write_ranks(tmp_path, monkeypatch)
    dead = tmp_path / f".{MERGE_ARCHIVE_FILE}.999999999.tmp"  # (no such process)
    dead.write_bytes(b"half an archive")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("rbln_perfetto.exporter.merge.archive_bytes", fail)
        with pytest.raises(OSError):
            merge(tmp_path)
    assert not dead.exists() and (tmp_path / "aggregate.pb").is_file()
    assert not (tmp_path / MERGE_ARCHIVE_FILE).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    merge(tmp_path)
    assert (tmp_path / MERGE_ARCHIVE_FILE).is_file()

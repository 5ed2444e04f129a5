"""The embedded backend's two table loaders: the C extension's database image (with its C EXTRACT_ARG)
and INSERTs from Python (with the Python EXTRACT_ARG) hold the same rows and give the same answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt
from trace_checks import check_loaders_agree

from rbln_perfetto.query import open_trace, sqlite_tables

CORPUS = Path(__file__).parent / "data" / "tp_corpus"


@pytest.mark.parametrize("case", sorted(p.name for p in CORPUS.glob("*.pb")))
def test_loaders_agree_on_the_corpus(case):
    check_loaders_agree(CORPUS / case)


def _wide_trace(path: Path, slices: int) -> Path:
    """Slices on two tracks with many argument sets: every value kind, uint64 >= 2**63, strings longer
    than a page (SQLite overflow pages), a track description longer than a page, nested slices."""
    t = pt.Trace()
    p = t.packet.add(trusted_packet_sequence_id=1)
    p.track_descriptor.uuid, p.track_descriptor.name = 5, "T"
    p.track_descriptor.description = "d" * 9000
    p = t.packet.add(trusted_packet_sequence_id=1)
    p.track_descriptor.uuid, p.track_descriptor.name, p.track_descriptor.parent_uuid = 6, "child", 5
    for i in range(slices):
        track = 5 + i % 2
        for kind in (pt.TrackEvent.TYPE_SLICE_BEGIN, pt.TrackEvent.TYPE_INSTANT, pt.TrackEvent.TYPE_SLICE_END):
            p = t.packet.add(trusted_packet_sequence_id=1, timestamp=1000 + 10 * i + kind)
            e = p.track_event
            e.type, e.track_uuid = kind, track
            if kind == pt.TrackEvent.TYPE_SLICE_END:
                continue
            e.name = f"{i % 7}_layer.{i % 13}_{i}" if kind == pt.TrackEvent.TYPE_SLICE_BEGIN else "mark"
            e.debug_annotations.add(name="u", uint_value=2**64 - 1 - i % 3)
            e.debug_annotations.add(name="i", int_value=-(2**40) * (i % 5))
            e.debug_annotations.add(name="d", double_value=i / 3)
            e.debug_annotations.add(name="b", bool_value=bool(i % 2))
            e.debug_annotations.add(name="p", pointer_value=2**63 + i % 4)
            e.debug_annotations.add(name="s", string_value=("x" * (5000 + i) if i % 50 == 0 else f"v{i % 11}"))
    path.write_bytes(t.SerializeToString())
    return path


def test_loaders_agree_on_every_value_kind_and_page_overflow(tmp_path):
    check_loaders_agree(_wide_trace(tmp_path / "wide.pb", 300))


def test_extract_arg_reads_back_what_args_holds(tmp_path):
    # On whichever loader is in use: uint64 >= 2**63 negative (as int_value holds it), NULL for a
    # missing key, an arg set that does not exist, or an argument of another type.
    with open_trace(_wide_trace(tmp_path / "wide.pb", 3), backend="sqlite") as tr:
        row = tr.query("select extract_arg(arg_set_id, 'debug.u') as u, extract_arg(arg_set_id, 'debug.p') as p, "
                       "extract_arg(arg_set_id, 'debug.d') as d, extract_arg(arg_set_id, 'debug.s') as s, "
                       "extract_arg(arg_set_id, 'debug.nope') as missing, extract_arg(999999, 'debug.u') as bad_set, "
                       "extract_arg(-1, 'debug.u') as negative, extract_arg(null, 'debug.u') as null_set "
                       "from slice where name = '1_layer.1_1'").iloc[0].tolist()
    assert row[:4] == [-2, 2**63 + 1 - 2**64, 1 / 3, "v1"]
    assert all(v is None for v in row[4:])


def test_extract_arg_is_the_c_function_where_the_extension_is_built(tmp_path):
    # The Python function (and the reader's argument sets it needs) stays only without the extension.
    if sqlite_tables.EXTENSION is None:
        pytest.skip("the C table writer is not built (or RBLN_PERFETTO_PURE_PYTHON=1)")
    with open_trace(_wide_trace(tmp_path / "wide.pb", 3), backend="sqlite") as tr:
        assert tr._impl._args is None
        assert tr.query("select extract_arg(arg_set_id, 'debug.s') as s from slice where name = 'mark' "
                        "order by id").s.tolist() == ["x" * 5000, "v1", "v2"]


def test_the_image_backs_a_writable_database(tmp_path):
    # A deserialized image is an ordinary database: a query may add tables and rows.
    if sqlite_tables.EXTENSION is None:
        pytest.skip("the C table writer is not built (or RBLN_PERFETTO_PURE_PYTHON=1)")
    with open_trace(_wide_trace(tmp_path / "wide.pb", 50), backend="sqlite") as tr:
        tr.query("create table mine as select id, dur from slice where dur > 0")
        tr.query("insert into __slice (id, ts, dur, track_id, depth) values (100000, 1, 2, 0, 0)")
        assert tr.query("select count(*) as n from mine").n[0] == 50
        assert tr.query("select name from slice where id = 100000").name.tolist() == [None]

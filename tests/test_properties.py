"""Property tests: random capture streams must always export to files that parse, keep the nesting
invariants, and read back through the embedded SQL backend to exactly the slices the capture implies.

CI runs a modest number of examples; `make fuzz` (RBLN_PERFETTO_FUZZ_EXAMPLES=2000) runs many.
"""

import os
import warnings
from collections import Counter

from hypothesis import HealthCheck, given, settings
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt
from hypothesis import strategies as st
from synthetic import expected_slices, program, write_capture
from trace_checks import check_scanner_agrees, check_trace
from trace_objects import iter_packets

import rbln_perfetto
from rbln_perfetto.errors import QueryError
from rbln_perfetto.query import REPORTS, open_trace
from rbln_perfetto.reader import scanner_available

EXAMPLES = int(os.environ.get("RBLN_PERFETTO_FUZZ_EXAMPLES", "25"))
# Any text but NUL: trace_processor (and so the embedded reader) cuts a string at its first NUL, and no
# layer, tensor or host-event name (torch module paths, our own labels) holds one.
CHARACTERS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.text(CHARACTERS, min_size=1, max_size=12)
LONG_TEXT = st.one_of(TEXT, st.text(CHARACTERS, min_size=200, max_size=3000))
HUGE = st.one_of(st.integers(0, 1000), st.integers(0, 2**64 - 1))


@st.composite
def commands(draw):
    """A command table: single commands, consistent split groups, and some inconsistent indices."""
    out = []
    for _ in range(draw(st.integers(1, 12))):
        layer, op, shapes = draw(LONG_TEXT), draw(TEXT), draw(TEXT)
        shape = draw(st.sampled_from(["single", "split", "odd"]))
        if shape == "single":
            out.append((layer, op, 0, 1, shapes, draw(HUGE), draw(HUGE), draw(st.integers(0, 2**40))))
        elif shape == "split":
            k = draw(st.integers(2, 5))
            out += [(layer, op, i, k, shapes, draw(HUGE), draw(HUGE), draw(st.integers(0, 2**40))) for i in range(k)]
        else:
            out.append((layer, op, draw(st.integers(0, 6)), draw(st.integers(1, 6)), shapes, draw(HUGE), draw(HUGE), 0))
    return out


@st.composite
def captures(draw):
    devices = draw(st.lists(st.integers(0, 31), min_size=1, max_size=6, unique=True))
    progs = []
    for i in range(draw(st.integers(1, 4))):
        n_in, n_out = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        cmds = draw(commands())
        ins = [(f"in{j}", (2, 3), "float32", draw(HUGE), draw(st.integers(0, len(cmds) - 1))) for j in range(n_in)]
        outs = [(f"out{j}", (), "int64", draw(HUGE), draw(st.integers(0, len(cmds) - 1))) for j in range(n_out)]
        progs.append(program(f"{draw(TEXT)}{i}", draw(st.sampled_from(devices)), cmds, ins, outs,
                             draw(st.integers(0, 2**40))))
    gap = st.one_of(st.just(0), st.integers(0, 5), st.integers(0, 10**9))
    calls = []
    for _ in range(draw(st.integers(1, 8))):
        index = draw(st.integers(0, len(progs) - 1))
        p = progs[index]
        calls.append((index, draw(st.lists(gap, min_size=len(p.inputs) + len(p.commands) + len(p.outputs),
                                           max_size=len(p.inputs) + len(p.commands) + len(p.outputs)))))
    host = draw(st.lists(st.tuples(st.integers(0, len(calls) - 1), TEXT, st.integers(0, 10**6), st.one_of(st.just(""), TEXT)),
                         max_size=4))
    return progs, calls, host


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=captures())
def test_random_captures_export_to_valid_traces_that_read_back(tmp_path_factory, data):
    progs, calls, host = data
    tmp = tmp_path_factory.mktemp("prop")
    capture = write_capture(tmp / "capture.rblncap", progs, calls, host)
    result = rbln_perfetto.export(capture, tmp / "out")
    assert len(result.invocation_files) == len(calls)
    for path in result.invocation_files + [result.aggregate_file]:
        check_trace(path)
    if scanner_available():  # a skip here would skip every example's other checks too
        check_scanner_agrees(result.aggregate_file)
    want = Counter(expected_slices(capture))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing in our own traces may be left unread
        tr = open_trace(result.aggregate_file, backend="sqlite")
    with tr:
        rows = tr.query("""
            select t.name as track, p.name as device, s.name, s.ts, s.dur, s.depth
            from slice s join track t on s.track_id = t.id join track p on t.parent_id = p.id""")
        got = Counter((r.track, int(r.device.split()[-1]), r.name, int(r.ts), int(r.dur), int(r.depth))
                      for r in rows.itertuples())
        assert got == want
        big = tr.query("select count(*) as n from args where key = 'debug.bytes' and value_type = 'uint'").n[0]
        assert big == 0 or any(c.bytes >= 2**63 for p in progs for c in p.commands) or any(
            t.bytes >= 2**63 for p in progs for t in p.inputs + p.outputs)
        # EXTRACT_ARG reads what the args table holds, uint64 included, and every report runs.
        pairs = tr.query("""select a.int_value as stored, extract_arg(s.arg_set_id, 'debug.bytes') as extracted
                            from slice s join args a on a.arg_set_id = s.arg_set_id where a.key = 'debug.bytes'""")
        assert len(pairs) and (pairs.stored == pairs.extracted).all()
        # Reports sum bytes as SQLite integers, as trace_processor does: sums past int64 fail there
        # with "integer overflow" too, so they may fail here only when the drawn sizes allow it.
        could_overflow = sum(c.bytes + c.flops for p in progs for c in p.commands) + sum(
            t.bytes for p in progs for t in p.inputs + p.outputs) >= 2**63 // max(1, len(calls))
        for name in REPORTS:
            try:
                tr.report(name)
            except QueryError as exc:
                if not (could_overflow and "integer overflow" in str(exc)):
                    raise


@settings(max_examples=EXAMPLES * 8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mangled_traces_read_the_same_on_both_reader_paths(tmp_path_factory, data):
    """Cut, flipped or spliced bytes: the C scanner path never crashes, and wherever both of the
    reader's paths accept a file they decode it to the same tables."""
    from rbln_perfetto.errors import TraceReadError
    from rbln_perfetto.reader import read_tables

    source = _small_trace(tmp_path_factory)
    raw = bytearray(source.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "splice"]))
        at = data.draw(st.integers(0, len(raw) - 1))
        if action == "flip":
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            raw = raw[:at] + raw[at + data.draw(st.integers(1, 16)):]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            raw = bytearray(b"\x0a")
    path = tmp_path_factory.mktemp("mangled") / "trace.pb"
    path.write_bytes(bytes(raw))
    outcomes = []
    for scanner in ("auto", None):
        try:
            outcomes.append(read_tables(path, scanner=scanner))
        except TraceReadError:
            outcomes.append(None)
    if all(o is not None for o in outcomes) and scanner_available():
        check_scanner_agrees(path)


_SMALL = {}


def _small_trace(tmp_path_factory):
    """An uncompressed trace of a few split commands (compression would hide the mangling)."""
    if "path" not in _SMALL:
        tmp = tmp_path_factory.mktemp("small")
        prog = program("transformer", 0, [("ff", "linear", i, 2, "[1, 8]", 64, 128, 64) for i in range(2)]
                       + [(f"l{i}", "gelu", 0, 1, "[1]", 8, 8, 8) for i in range(10)], [("x", (1,), "float32", 4, 0)])
        capture = write_capture(tmp / "capture.rblncap", [prog], [(0, [3] * 13)] * 2)
        trace = pt.Trace(packet=iter_packets(rbln_perfetto.export(capture, tmp / "out").aggregate_file))
        _SMALL["path"] = tmp / "plain.pb"
        _SMALL["path"].write_bytes(trace.SerializeToString())
    return _SMALL["path"]


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(batches=st.lists(st.lists(st.integers(1, 2**64 - 1) | st.sampled_from([1, 2**63, 2**64 - 1]), max_size=40),
                        max_size=40))
def test_reader_hash_table_finds_every_key_it_was_given(batches):
    """The reader's column-wise hash -> id table (probed by the C scanner): every hash it was given is
    found, however many (it grows), and a new one is made once, at its first row, in row order."""
    import numpy as np

    from rbln_perfetto.reader.columns import HashIdTable
    from rbln_perfetto.reader.scanner import SCANNER

    if SCANNER is None:
        return  # (the table exists for the scanner's hashes only)
    table, known = HashIdTable(SCANNER), {}
    for batch in batches:
        hashes = np.array(batch, dtype=np.uint64)
        made = []

        def make(i):
            made.append(i)
            return 1000 + len(known) + len(made)

        ids = table.ids_of(hashes, make)
        first_rows = [i for i, h in enumerate(batch) if h not in known and h not in batch[:i]]
        assert made == first_rows
        base = 1000 + len(known)
        known.update({batch[i]: base + k + 1 for k, i in enumerate(made)})
        assert ids.tolist() == [known[h] for h in batch]
    assert table.count == len(known)

"""A run split across processes: ranks on 127.0.0.1 (gloo), each with its own capture, merged onto rank 0's clock.

Ranks are started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the
environment), once through torchrun itself; rank 1's clocks are shifted by a known amount
(`RBLN_TEST_CLOCK_SKEW_NS`) that the merge must find and remove within the uncertainty it reports.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ConfigError, RBLNConfig
from pipeline.ranks import check_ranks
from rbln_perfetto.naming import CAPTURE_FILE
from rbln_perfetto.recorder.capture import iter_records, read_info
from rbln_perfetto.cli import main
from rbln_perfetto import rbln_capture_pb2 as pb
from rbln_perfetto.exporter.merge import merge
from rbln_perfetto.exporter.rank_clocks import RankClock, causal_bounds
from rbln_perfetto.query import open_trace, open_traces

ROOT = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).parent / "torchrun"
SKEW_NS = 7_000_000_000  # rank 1 runs 7 s ahead of rank 0
TWO_RANKS = {"text_encoder_3": {"device": 1}, "devices": ["cpu", "cpu"], "ranks": [0, 1]}
THREE_RANKS = {"text_encoder_3": {"device": 1}, "transformer": {"device": 2}, "devices": ["cpu", "cpu", "cpu"],
               "ranks": {"0": 0, "1": 1, "2": 2}}
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}
    env.pop("RBLN_TEST_CLOCK_SKEW_NS", None)
    env.update(extra)
    return env


def _run_args(model, out, config, steps=2) -> list[str]:
    return ["run", "--model", str(model), "--out", str(out), "--steps", str(steps), "--config", json.dumps(config)]


def start_ranks(model, out, config, world, *, steps=2, **env) -> list[subprocess.Popen]:
    """`world` rank processes on 127.0.0.1, with the environment torchrun gives its workers."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        rank_env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, RANK=str(rank), WORLD_SIZE=str(world),
                        LOCAL_RANK=str(rank), **env)
        procs.append(subprocess.Popen([sys.executable, "-m", "rbln_perfetto.cli", *_run_args(model, out, config, steps)],
                                      cwd=ROOT, env=rank_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each rank, once it ended."""
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    return [(p.returncode, *out) for p, out in zip(procs, outputs)]


def _image(path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def compiles(tmp_path_factory):
    """A compile cache of the image tests' own: the one-process and the two-rank pipelines are both compiled
    here, by `rbln-perfetto run` under the same threads (OMP_NUM_THREADS=1), as a user's two runs would be,
    not taken from the session's cache, where whichever test came first compiled them in its own process.
    (In one CI-like run of the whole suite the two images differed with the shared cache; alone they agree.)"""
    return tmp_path_factory.mktemp("compiles")


@pytest.fixture(scope="module")
def single(tiny_model, tmp_path_factory, compiles):
    """The same placement in one process: the reference image."""
    out = tmp_path_factory.mktemp("single")
    config = {k: v for k, v in TWO_RANKS.items() if k != "ranks"}
    subprocess.run([sys.executable, "-m", "rbln_perfetto.cli", *_run_args(tiny_model, out, config)], cwd=ROOT,
                   env=_env(RBLN_PERFETTO_CACHE=str(compiles)), check=True, capture_output=True, timeout=TIMEOUT)
    return out


@pytest.fixture(scope="module")
def two(tiny_model, tmp_path_factory, compiles):
    """Two ranks through torchrun itself, rank 1's clocks skewed by SKEW_NS."""
    out = tmp_path_factory.mktemp("two")
    done = subprocess.run([str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                           "--master-port", str(_free_port()), "-m", "rbln_perfetto.cli",
                           *_run_args(tiny_model, out, TWO_RANKS)],
                          cwd=ROOT, env=_env(RBLN_TEST_CLOCK_SKEW_NS=f"1:{SKEW_NS}", RBLN_PERFETTO_CACHE=str(compiles)),
                          capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def _slices(trace, where="1") -> list[tuple]:
    with open_trace(trace, backend="sqlite") as tr:
        df = tr.query(f"""select s.name, s.ts, s.dur, s.depth, coalesce(p.name, t.name) as top, t.name as track
                          from slice s join track t on s.track_id = t.id left join track p on t.parent_id = p.id
                          where {where} order by s.ts, s.id""")
    return list(df.itertuples(index=False))


def _transfers(trace) -> list[dict]:
    with open_trace(trace, backend="sqlite") as tr:
        df = tr.query("""select s.id, s.name, s.ts, s.dur, extract_arg(s.arg_set_id, 'debug.flow_key') as flow_key,
                                extract_arg(s.arg_set_id, 'debug.transfer') as direction
                         from slice s where extract_arg(s.arg_set_id, 'debug.flow_key') is not null""")
    return df.to_dict("records")


def test_two_ranks_give_the_single_process_image(two, single):
    out, stdout = two
    assert "merged 2 ranks" in stdout
    assert np.array_equal(_image(out / "image.png"), _image(single / "image.png"))


def test_each_rank_writes_its_own_capture_with_its_clock_exchanges(two):
    out, _ = two
    for rank in (0, 1):
        info = read_info(out / f"rank{rank}" / CAPTURE_FILE)
        assert info.status == "ok" and info.rank == rank and info.pipelines[0].world_size == 2
        assert [s.label for s in info.clock_syncs] == ["start", "end"]
        assert {d.logical for d in info.pipelines[0].devices} == {rank}
    # Rank 1 holds text_encoder_3's calls under the run's sequence indices (3 encoders x prompt / negative).
    rank1 = [r.invocation.sequence_index for _, r in iter_records(out / "rank1" / CAPTURE_FILE)
             if r.WhichOneof("kind") == "invocation"]
    assert rank1 == [2, 5]
    names = sorted(p.name for p in out.glob("0*.pb"))
    assert names == sorted([p.name for p in (out / "rank0").glob("0*.pb")] + [p.name for p in (out / "rank1").glob("0*.pb")])
    assert "0002_text_encoder_3_0.pb" in names and "0006_transformer_0.pb" in names


def test_merged_slices_equal_each_ranks_own(two):
    out, _ = two
    for rank in (0, 1):
        own = _slices(out / f"rank{rank}" / "aggregate.pb")
        merged = _slices(out / "aggregate.pb", f"coalesce(p.name, t.name) like 'Rank {rank} / %'")
        assert len(merged) == len(own) > 0
        t0, m0 = own[0].ts, merged[0].ts
        for a, b in zip(own, merged):
            assert b.name == f"i{rank}_{a.name}"
            track = f"Rank {rank} / {a.track}" if a.track == a.top else a.track  # top-level tracks are renamed
            assert (b.dur, b.ts - m0, b.depth, b.track, b.top) == (a.dur, a.ts - t0, a.depth, track, f"Rank {rank} / {a.top}")


def test_open_traces_on_a_merged_run_gives_its_merged_traces_once(two):
    """The rank directories' own traces repeat the merged ones: a run directory gives each invocation once."""
    out, _ = two
    with open_traces(out, backend="sqlite") as ts:
        assert ts.traces == sorted(p.name for p in out.glob("0*.pb"))
        assert ts.query("select count(*) as n from slice")["n"].sum() == sum(
            len(_slices(p)) for p in sorted(out.glob("0*.pb")))
    with open_traces(out, backend="sqlite", files="aggregate") as ts:
        assert ts.traces == ["aggregate.pb"]
    with open_traces(out / "rank1", backend="sqlite") as ts:  # a rank directory given itself is read
        assert ts.traces == ["0002_text_encoder_3_0.pb", "0005_text_encoder_3_1.pb"]


def test_dma_report_names_the_other_rank_of_each_transfer(two):
    out, _ = two
    with open_trace(out / "rank0" / "aggregate.pb", backend="sqlite") as tr:
        df = tr.report("dma")
    sends, recvs = df[df.destination == "rank 1"], df[df.source == "rank 1"]
    # text_encoder_3 on rank 1: its inputs go there and its outputs come back, twice (prompt, negative)
    assert set(sends.submodule) == set(recvs.submodule) == {"text_encoder_3"}
    assert set(sends.source) == set(recvs.destination) == {"device 0"}
    assert sends.transfers.sum() == recvs.transfers.sum() == 2
    assert (sends.bytes > 0).all() and sends.tensor.notna().all() and recvs.tensor.notna().all()
    assert df.source.notna().all() and df.destination.notna().all()


def test_flows_point_from_each_send_to_its_recv(two):
    out, _ = two
    transfers = _transfers(out / "aggregate.pb")
    by_id = {t["id"]: t for t in transfers}
    with open_trace(out / "aggregate.pb", backend="sqlite") as tr:
        flows = tr.query("select slice_out, slice_in from flow").itertuples(index=False)
        cross = [(by_id[f.slice_out], by_id[f.slice_in]) for f in flows if f.slice_out in by_id]
    assert len(cross) == len(transfers) // 2 == 4  # inputs and outputs of 2 remote calls
    for send, recv in cross:
        assert send["direction"] == "send" and recv["direction"] == "recv"
        assert send["flow_key"] == recv["flow_key"]
        assert send["name"][:3] != recv["name"][:3]  # i0_ -> i1_ or back: across ranks


def test_merge_removes_an_injected_clock_offset_within_its_uncertainty(two):
    out, stdout = two
    clock = merge(out).clocks[1]
    assert abs(clock.offset_ns - SKEW_NS) <= clock.uncertainty_ns
    assert f"rank 1: clock offset {clock.offset_ns / 1e3:+.1f} us +- {clock.uncertainty_ns / 1e3:.1f} us" in stdout
    with open_trace(out / "aggregate.pb", backend="sqlite") as tr:
        args = dict(tr.query("""select key, int_value from args join slice using (arg_set_id)
                                where slice.name = (select name from slice where name like 'i1_run %')
                                and key like 'debug.clock_%'""").itertuples(index=False))
    assert args["debug.clock_offset_ns"] == clock.offset_ns and args["debug.clock_uncertainty_ns"] == clock.uncertainty_ns
    # On one clock: every recv starts after its send started, and rank 1's text_encoder_3 runs between
    # rank 0 sending its inputs and receiving its outputs.
    transfers = _transfers(out / "aggregate.pb")
    sends = {t["flow_key"]: t for t in transfers if t["direction"] == "send"}
    for recv in (t for t in transfers if t["direction"] == "recv"):
        assert recv["ts"] >= sends[recv["flow_key"]]["ts"] - clock.uncertainty_ns
    workload = [s for s in _slices(out / "aggregate.pb") if s.track == "Workload" and "text_encoder_3" in s.name]
    inputs = sorted(t["ts"] for t in transfers if t["name"].startswith("i0_send"))
    outputs = sorted(t["ts"] + t["dur"] for t in transfers if t["name"].startswith("i0_recv"))
    assert len(workload) == len(inputs) == len(outputs) == 2
    for call, sent, back in zip(workload, inputs, outputs):
        assert sent - clock.uncertainty_ns <= call.ts and call.ts + call.dur <= back + clock.uncertainty_ns


@pytest.mark.slow
def test_three_ranks(tiny_model, tmp_path, single):
    procs = start_ranks(tiny_model, tmp_path, THREE_RANKS, 3)
    results = finish(procs)
    assert [r[0] for r in results] == [0, 0, 0], results[0][2][-2000:]
    assert np.array_equal(_image(tmp_path / "image.png"), _image(single / "image.png"))
    tops = {s.top for s in _slices(tmp_path / "aggregate.pb")}
    assert {"Rank 0 / Device 0", "Rank 1 / Device 1", "Rank 2 / Device 2"} <= tops
    # text_encoder_3 on rank 1: 2 calls; the transformer on rank 2: 2 steps; each call 2 sends and 2 recvs.
    assert len(_transfers(tmp_path / "aggregate.pb")) == 4 * 4
    assert "0006_transformer_0.pb" in {p.name for p in (tmp_path / "rank2").glob("*.pb")}


@pytest.mark.slow
def test_a_killed_rank_leaves_the_others_mergeable(tiny_model, tmp_path, capsys):
    config = {"transformer": {"device": 1}, "devices": ["cpu", "cpu"], "ranks": [0, 1]}
    procs = start_ranks(tiny_model, tmp_path, config, 2, steps=200, RBLN_RANK_TIMEOUT_S="60")
    capture = tmp_path / "rank1" / CAPTURE_FILE
    deadline = time.monotonic() + TIMEOUT
    while not (capture.is_file() and read_info(capture).invocations >= 3):
        assert time.monotonic() < deadline and procs[1].poll() is None, finish(procs)
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    (code0, _, err0), _ = finish(procs)
    assert code0 != 0
    assert "rank 1's capture ends early" in err0
    assert main(["merge", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "rank 1's capture ends early" in err[0]
    tops = {s.top for s in _slices(tmp_path / "aggregate.pb")}
    assert {"Rank 0 / Device 0", "Rank 1 / Device 1"} <= tops
    # Without rank 1's directory the merge still writes rank 0's and names the missing rank.
    for path in sorted((tmp_path / "rank1").iterdir()):
        path.unlink()
    (tmp_path / "rank1").rmdir()
    assert main(["merge", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"rbln-perfetto merge: rank 1 is missing: {tmp_path / 'rank1'} does not exist"]


@pytest.mark.parametrize("ranks, message", [
    ([0, 2], "rbln_config['ranks'][1]=2 is not a rank of this run of 2 process(es); valid: 0..1"),
    ({"0": 0}, "rbln_config['ranks'] has no rank for logical device 1 (text_encoder_3); valid: a rank for every "
               "logical device 0..1"),
    ({"0": 0, "x": 1}, "rbln_config['ranks'] key 'x' is not a logical device; valid: 0..1"),
    ([0, "1"], "rbln_config['ranks'][1]='1' must be an int >= 0, got str"),
    ([1, 0], "rbln_config['ranks'][0]=1 is not valid: logical device 0 is the root device"),
])
def test_bad_rank_maps_are_one_line_errors(ranks, message):
    with pytest.raises(ConfigError) as err:
        check_ranks(RBLNConfig.from_dict({"text_encoder_3": {"device": 1}, "ranks": ranks}), 2)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_rank_map_beyond_one_process_is_refused_before_loading(capsys, tmp_path):
    config = json.dumps({"text_encoder_3": {"device": 1}, "ranks": [0, 1]})
    assert main(["run", "--config", config, "--out", str(tmp_path / "x"), "--model", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("rbln-perfetto run: error: rbln_config['ranks'][1]=1 is not a rank of this run of 1 process(es); "
                   "valid: 0..0 (start more with torchrun --nproc-per-node N)")


def test_transfers_narrow_a_clock_offset_to_what_causality_allows(tmp_path):
    """Rank 1 received rank 0's message 30 us (its clock) after rank 0 sent it, and rank 0 received
    rank 1's 50 us after: the offset lies in (-50 us, 30 us), whatever the exchanges said beyond that."""
    rank0 = {0: ("send", 1, 1_000_000), 1: ("recv", 1, 2_050_000)}
    rank1 = {0: ("recv", 0, 1_030_000), 1: ("send", 0, 2_000_000)}
    assert causal_bounds(1, rank1, rank0) == (2_000_000 - 2_050_000 + 1, 1_030_000 - 1_000_000 - 1)
    assert causal_bounds(1, {5: ("recv", 0, 0)}, rank0) == (-math.inf, math.inf)  # no matching flow: no bound

    class Info:  # what RankClock reads of a capture
        rank = 1
        clock_syncs = [pb.ClockSync(label="start", rank=1, offset_ns=100_000, uncertainty_ns=200_000),
                       pb.ClockSync(label="end", rank=1, offset_ns=100_000, uncertainty_ns=200_000)]

    clock = RankClock.of(Info, causal_bounds(1, rank1, rank0))
    assert (clock.exchange_offset_ns, clock.exchange_uncertainty_ns, clock.drift_ns) == (100_000, 200_000, 0)
    assert clock.transfers_bound and (clock.offset_ns, clock.uncertainty_ns) == (-10_000, 39_999)  # [-49_999, 29_999]
    # Bounds that contradict the exchanges (drift) leave the exchanges' answer.
    clock = RankClock.of(Info, (400_000, 500_000))
    assert not clock.transfers_bound and (clock.offset_ns, clock.uncertainty_ns) == (100_000, 200_000)


@pytest.mark.skipif(not os.environ.get("RBLN_PERFETTO_TP_BIN"), reason="RBLN_PERFETTO_TP_BIN is not set")
def test_trace_processor_reads_the_merged_trace_as_the_embedded_backend_does(two):
    """Several sequences, shifted clock snapshots and cross-rank flows: both backends agree, no data loss."""
    out, _ = two
    sql = {"slices": "select s.ts, s.dur, s.name, t.name as track from slice s join track t on s.track_id = t.id "
                     "order by s.ts, s.name",
           "flows": "select a.name as out_name, b.name as in_name from flow f join slice a on a.id = f.slice_out "
                    "join slice b on b.id = f.slice_in order by a.ts, b.ts",
           "losses": "select name, value from stats where value > 0 and severity in ('error', 'data_loss')"}
    answers = []
    for backend in ("sqlite", "trace_processor"):
        with open_trace(out / "aggregate.pb", backend=backend, tp_bin=os.environ["RBLN_PERFETTO_TP_BIN"]) as tr:
            answers.append({k: [tuple(r) for r in tr.query(q).itertuples(index=False)] for k, q in sql.items()})
    assert answers[0] == answers[1]
    assert answers[0]["losses"] == []
    assert sum(o.startswith("i0_send") and i.startswith("i1_recv") for o, i in answers[0]["flows"]) == 2

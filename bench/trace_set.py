"""Many traces at once: `open_traces` on a run directory against a loop of `open_trace`.

Two run directories: the medium model profiled for `steps` steps (7 + steps small per-invocation
traces), and a synthetic SD3-medium capture of `commands` commands exported per invocation (35
traces, the transformer's the largest). On each, each variant in a fresh process: seconds to load
every trace; to run a summary query on all of them (one DataFrame with a `trace` column), and again
(the traces stay loaded); to fetch every slice (the cost of moving rows to the caller). Variants: "open_trace loop", the embedded backend one trace after
another in one process; "pool of N", open_traces' embedded process pool of `workers` processes;
"BatchTraceProcessor", open_traces on trace_processor (when $RBLN_PERFETTO_TP_BIN is set). Median
of `repeats` runs, variants interleaved; ratios against the open_trace loop.

A third set holds about 1,000 traces (`many_runs`): the medium model profiled once for 28 steps (34
per-invocation traces), its run directory linked `runs` times (30: 1,020 traces; every run holds the
same traces, which costs each variant what 30 different runs would). Its rows are judged by issue 26's
targets: a summary query <= 1 s over the set, as BatchTraceProcessor's documentation promises ("fast
(<1s) interactive queries on large sets (up to ~1000) of traces", perfetto.dev/docs/analysis/
batch-trace-processor); the load <= BatchTraceProcessor's, which its documentation gives no figure for,
so it is judged against the BatchTraceProcessor row measured beside it (with $RBLN_PERFETTO_TP_BIN) and
left unjudged without one.

    python -m bench.trace_set [--steps 8] [--commands 600000] [--repeats 3] [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from bench.common import Row, judged, print_rows, run_child

# A summary (few rows back per trace: the SQL's own cost) and every slice (the cost of moving rows).
SUMMARY = "select depth, count(*) as n, sum(dur) as total from slice group by depth order by depth"
EVERY = "select id, ts, dur, name from slice order by id"

_TIME = """
import json, sys, time
from pathlib import Path
import pandas  # imported by any query anyway; not part of the load
from rbln_perfetto.query import open_trace, open_traces

def sequential(folder):  # what one would write without open_traces
    paths = sorted(p for p in Path(folder).rglob("*.pb") if p.name != "aggregate.pb")
    traces = [open_trace(p, backend="sqlite") for p in paths]
    class Loop:
        def query(self, sql):
            frames = [t.query(sql) for t in traces]
            for p, f in zip(paths, frames):
                f.insert(0, "trace", str(p.relative_to(folder)))
            return pandas.concat(frames, ignore_index=True)
        def close(self):
            for t in traces:
                t.close()
    return Loop()

if __name__ == "__main__":
    variant, folder, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    start = time.perf_counter()
    if variant == "sequential":
        ts = sequential(folder)
    else:
        ts = open_traces(folder, backend=variant, workers=workers)
    times = {"load": time.perf_counter() - start}
    for key, sql in (("summary", sys.argv[4]), ("again", sys.argv[4]), ("every", sys.argv[5])):
        if not sql:
            continue
        start = time.perf_counter()
        times[f"{key} rows"] = len(ts.query(sql))
        times[key] = time.perf_counter() - start
    ts.close()
    print(json.dumps(times))
"""


QUERY_TARGET_S = 1.0  # BatchTraceProcessor's documented "<1s" per query over ~1000 traces


def many_runs(runs: int = 30, steps: int = 28, repeats: int = 1, workers: int | None = None) -> list[Row]:
    """About 1,000 traces: one medium run of `steps` steps, its invocation traces linked into `runs` run directories."""
    from bench.sqlite_load import medium_trace

    workers = workers or os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="rbln-trace-set-many-"))
    try:
        one = medium_trace(tmp / "profiled", steps).parent
        files = sorted(p for p in one.glob("*.pb") if p.name != "aggregate.pb")
        root = tmp / "runs"
        for r in range(runs):
            run_dir = root / f"run-{r:02}"
            run_dir.mkdir(parents=True)
            for f in files:
                os.link(f, run_dir / f.name)
        label = f"{runs} runs x {steps} steps"
        rows = _measure(label, root, repeats, workers, every=False)
        judge_many(rows, label)
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def judge_many(rows: list[Row], label: str) -> None:
    """Issue 26's targets on the many-traces rows: each query <= 1 s; the load <= BatchTraceProcessor's."""
    btp_load = next((r.value for r in rows if r.variant == f"{label}, BatchTraceProcessor: load"), None)
    for r in rows:
        if not r.variant.startswith(label) or "BatchTraceProcessor" in r.variant:
            continue
        if r.variant.endswith("load"):
            r.target = (judged("<= BatchTraceProcessor's load", r.value, btp_load, at_most=True, fmt="{:.2f}", unit=" s")
                        if btp_load else "<= BatchTraceProcessor's load: unjudged (no binary here; its docs give no load figure)")
        else:
            r.target = judged("<= 1 s (BatchTraceProcessor's documented figure)", r.value, QUERY_TARGET_S, at_most=True,
                              fmt="{:.2f}", unit=" s")


def run(steps: int = 8, commands: int = 600_000, repeats: int = 3, workers: int | None = None) -> list[Row]:
    from bench.sqlite_load import medium_trace

    workers = workers or os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="rbln-trace-set-"))
    try:
        folders = {f"medium {steps} steps": medium_trace(tmp / "medium", steps).parent,
                   f"synth {commands / 1e6:g}M cmds": _synthetic_run(tmp / "synthetic", commands)}
        return [row for label, folder in folders.items() for row in _measure(label, folder, repeats, workers)]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _synthetic_run(out: Path, commands: int) -> Path:
    import rbln_perfetto
    from bench.synthetic_capture import write_capture

    out.mkdir(parents=True)
    write_capture(out / "capture.rblncap", commands)
    rbln_perfetto.export(out / "capture.rblncap", out, aggregate=False)
    return out


def _measure(label: str, folder: Path, repeats: int, workers: int, every: bool = True) -> list[Row]:
    traces = [p for p in folder.rglob("*.pb") if p.name != "aggregate.pb"]
    size = sum(p.stat().st_size for p in traces) / 1e6
    variants = {"open_trace loop": "sequential", f"pool of {workers}": "sqlite"}
    if os.environ.get("RBLN_PERFETTO_TP_BIN"):
        variants["BatchTraceProcessor"] = "trace_processor"
    samples: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, variant in variants.items():
            samples[name].append(run_child(_TIME, variant, str(folder), str(workers), SUMMARY, EVERY if every else ""))
    rows = []
    keys = {"load": "load", "summary": "summary query", "again": "summary again", "every": "every slice"}
    if not every:
        del keys["every"]
    base = {k: statistics.median(s[k] for s in samples["open_trace loop"]) for k in keys}
    for name, found in samples.items():
        for key, what in keys.items():
            value = statistics.median(s[key] for s in found)
            got = f"; {found[0][key + ' rows']:,} rows" if key != "load" else ""
            rows.append(Row("trace set", f"{label}, {name}: {what}", value, "s",
                            value / base[key] if base[key] else None, "",
                            f"{len(traces)} traces, {size:.1f} MB{got}; median of {repeats}"))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--commands", type=int, default=600_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, help="embedded pool processes (default: the CPU count)")
    parser.add_argument("--runs", type=int, default=30, help="run directories of the ~1,000-trace set (0: skip it)")
    parser.add_argument("--only-many", action="store_true", help="only the ~1,000-trace set")
    args = parser.parse_args()
    rows = [] if args.only_many else run(args.steps, args.commands, args.repeats, args.workers)
    if args.runs:
        rows += many_runs(args.runs, 28, args.repeats if args.only_many else 1, args.workers)
    print_rows(rows)


if __name__ == "__main__":
    main()

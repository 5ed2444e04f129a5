"""Embedded (sqlite) backend load speed and peak memory, beside trace_processor's.

Loads (parse + build the trace_processor-shaped tables) the aggregate trace of a profiled medium
run and of a synthetic 1M-command SD3 capture, each load in a fresh process, and prints slices
loaded per second and the process's peak RSS; best of `repeats` loads.

With RBLN_PERFETTO_TP_BIN set, trace_processor_shell is the yardstick: each repetition runs the
embedded load, then `trace_processor_shell -q <one count query> TRACE` in a fresh process (its wall
time from start to exit, its peak RSS from the kernel's rusage of the child), side by side; the
embedded rows' ratios are embedded / trace_processor.

    python -m bench.sqlite_load [--steps 1] [--commands 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from bench.common import Row, judged, print_rows, run_child

PROMPT = "a photo of a cat holding a sign that says hello world"
TARGET = 500_000
TP_BIN_ENV = "RBLN_PERFETTO_TP_BIN"  # (as rbln_perfetto.query.tp_backend names it)

_LOAD = """
import json, sys, time
import pandas  # imported by any query anyway; not part of the load
from rbln_perfetto.query import open_trace
from rbln_perfetto.query.sqlite_tables import EXTENSION
from rbln_perfetto.reader import scanner_available
start = time.perf_counter()
tr = open_trace(sys.argv[1], backend="sqlite")
seconds = time.perf_counter() - start
slices = int(tr.query("select count(*) as n from slice")["n"][0])
print(json.dumps({"seconds": seconds, "slices": slices, "rss": peak_rss_mb(), "scanner": scanner_available(),
                  "tables": EXTENSION is not None}))
"""


# A small trace's load as a user's first call makes it: nothing imported before, no query after (a
# query's DataFrame imports pandas, which is the result's cost, not the load's).
_SMALL = """
import json, sys
from rbln_perfetto.query import open_trace
tr = open_trace(sys.argv[1], backend="sqlite")
heavy = sorted(m for m in ("pandas", "numpy", "torch", "pyarrow", "google.protobuf", "perfetto", "zlib_ng")
               if m in sys.modules)
print(json.dumps({"rss": peak_rss_mb(), "modules": len(sys.modules), "heavy": heavy}))
"""
# trace_processor's peak RSS loading a 1-step medium trace, as issue 26 measured it: the yardstick
# when no trace_processor_shell is configured to measure it beside ours.
TP_SMALL_RSS_MB = 38.0


def small_trace_rows(trace: Path, repeats: int, tp_rss: float | None) -> list[Row]:
    """Peak RSS of a fresh process that loads `trace` (max of `repeats`), against 1.5x trace_processor's."""
    runs = [run_child(_SMALL, str(trace)) for _ in range(repeats)]
    rss = max(r["rss"] for r in runs)
    yard, where = (tp_rss, "measured here") if tp_rss else (TP_SMALL_RSS_MB, "issue 26's figure")
    return [Row("sqlite load", "small trace load: peak RSS", rss, "MB", rss / yard,
                judged(f"<= 1.5x trace_processor's {yard:.0f} MB", rss / yard, 1.5, at_most=True, fmt="{:.2f}", unit="x"),
                f"open_trace of {trace.name} ({trace.stat().st_size / 1e3:.0f} kB) in a fresh process, nothing imported "
                f"before, no query after; max of {repeats}; trace_processor {yard:.0f} MB ({where}); "
                f"{runs[0]['modules']} modules imported, of the heavy ones: {', '.join(runs[0]['heavy']) or 'none'}")]


# Run by a fresh, small Python: a child's ru_maxrss starts from its parent's peak (Linux keeps it across
# fork and exec), so trace_processor is started from this launcher rather than from the benchmark process.
_TP_LAUNCH = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"seconds": time.perf_counter() - start, "rss": usage.ru_maxrss / 1024,
                  "status": os.waitstatus_to_exitcode(status)}))
"""


def trace_processor_load(tp_bin: str, trace: Path, query: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one fresh trace_processor_shell that loads `trace` and runs `query`:
    wall time from its start to its exit, ru_maxrss from its rusage (KB on Linux)."""
    r = run_child(_TP_LAUNCH, tp_bin, "-q", str(query), str(trace))
    if r["status"] != 0:
        raise RuntimeError(f"{tp_bin} -q {query} {trace} failed ({r['status']})")
    return r["seconds"], r["rss"]


def medium_trace(out: Path, steps: int) -> Path:
    import torch

    import rbln_perfetto
    from pipeline.compile_cache import embedded_model, load_or_compile

    pipe = load_or_compile(embedded_model("medium"), {"text_encoder_3": {"device": 1}})
    pipe.set_progress_bar_config(disable=True)
    with rbln_perfetto.profile(out) as prof:
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    return prof.aggregate_file


def synthetic_trace(out: Path, commands: int) -> Path:
    import rbln_perfetto
    from bench.synthetic_capture import write_capture

    out.mkdir(parents=True, exist_ok=True)
    capture = out / "capture.rblncap"
    write_capture(capture, commands)
    return rbln_perfetto.export(capture, out, per_invocation=False).aggregate_file


def run(steps: int = 1, commands: int = 1_000_000, repeats: int = 3) -> list[Row]:
    rows = []
    tp_bin = os.environ.get(TP_BIN_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="rbln-sqlite-load-"))
    try:
        query = tmp / "count.sql"
        query.write_text("select count(*) from slice;\n")
        traces = {f"medium run, {steps} step(s)": medium_trace(tmp / "medium", steps),
                  f"synthetic {commands / 1e6:g}M commands": synthetic_trace(tmp / "synthetic", commands)}
        for label, trace in traces.items():
            ours, theirs = [], []
            for _ in range(repeats):  # interleaved, so that machine noise hits both alike
                ours.append(run_child(_LOAD, str(trace)))
                if tp_bin:
                    theirs.append(trace_processor_load(tp_bin, trace, query))
            if label.startswith("medium"):
                rows += small_trace_rows(trace, repeats, max(m for _, m in theirs) if theirs else None)
            r = min(ours, key=lambda o: o["seconds"])
            seconds, rss = r["seconds"], max(o["rss"] for o in ours)
            path = ("C scanner" if r["scanner"] else "pure-Python reader (C scanner not built or disabled)") + \
                (", C table writer" if r["tables"] else ", tables by Python INSERTs (C table writer not built or disabled)")
            rows.append(Row("sqlite load", f"{label}", r["slices"] / seconds, "slices/s", None,
                            judged(f">= {TARGET / 1e3:.0f}k", r["slices"] / seconds, TARGET, at_most=False, unit=" slices/s"),
                            f"{r['slices']:,} slices in {seconds:.2f} s (best of {repeats} fresh processes; first "
                            f"{ours[0]['seconds']:.2f} s); {path}"))
            if not theirs:
                rows.append(Row("sqlite load", f"{label}: peak RSS", rss, "MB", None, "",
                                f"trace {trace.stat().st_size / 1e6:.1f} MB (max of {repeats})"))
                continue
            tp_seconds, tp_rss = min(s for s, _ in theirs), max(m for _, m in theirs)
            rows.append(Row("sqlite load", f"{label}: trace_processor", tp_seconds, "s", 1.0, "yardstick",
                            f"trace_processor_shell -q <count(*) from slice>, fresh process, best of {repeats}"))
            rows.append(Row("sqlite load", f"{label}: embedded", seconds, "s", seconds / tp_seconds,
                            judged("<= 0.5x", seconds / tp_seconds, 0.5, at_most=True, fmt="{:.3f}", unit="x"),
                            "open_trace(backend='sqlite') in a fresh process, best of the same interleaved runs"))
            rows.append(Row("sqlite load", f"{label}: trace_processor peak RSS", tp_rss, "MB", 1.0, "yardstick",
                            f"rusage ru_maxrss of the child, max of {repeats}; trace {trace.stat().st_size / 1e6:.1f} MB"))
            rows.append(Row("sqlite load", f"{label}: embedded peak RSS", rss, "MB", rss / tp_rss,
                            judged("<= 1.0x", rss / tp_rss, 1.0, at_most=True, fmt="{:.3f}", unit="x"),
                            f"VmHWM of the loading process (Python, numpy and pandas included), max of {repeats}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_rows(run(args.steps, args.commands, args.repeats))


if __name__ == "__main__":
    main()

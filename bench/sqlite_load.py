"""Embedded (sqlite) backend load speed and peak memory.

Loads (parse + build the trace_processor-shaped tables) the aggregate trace of a profiled medium
run and of a synthetic 1M-command SD3 capture, each in a fresh process, and prints slices loaded per
second and the process's peak RSS. Best of `repeats` loads.

    python -m bench.sqlite_load [--steps 1] [--commands 1000000]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.common import Row, print_rows, run_child

PROMPT = "a photo of a cat holding a sign that says hello world"
TARGET = 500_000

_LOAD = """
import json, sys, time
import pandas  # imported by any query anyway; not part of the load
from rbln_perfetto.query import open_trace
from rbln_perfetto.reader import scanner_available
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    tr = open_trace(sys.argv[1], backend="sqlite")
    times.append(time.perf_counter() - start)
    slices = int(tr.query("select count(*) as n from slice")["n"][0])
    if len(times) == 1:
        rss = peak_rss_mb()  # one load's peak: later loads may overlap a freed database
    tr.close()
print(json.dumps({"seconds": min(times), "first": times[0], "slices": slices, "rss": rss,
                  "scanner": scanner_available()}))
"""


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
    tmp = Path(tempfile.mkdtemp(prefix="rbln-sqlite-load-"))
    try:
        traces = {f"medium run, {steps} step(s)": medium_trace(tmp / "medium", steps),
                  f"synthetic {commands / 1e6:g}M commands": synthetic_trace(tmp / "synthetic", commands)}
        for label, trace in traces.items():
            r = run_child(_LOAD, str(trace), str(repeats))
            rate = r["slices"] / r["seconds"]
            path = "C scanner" if r["scanner"] else "pure-Python path (C scanner not built or disabled)"
            rows.append(Row("sqlite load", f"{label}", rate, "slices/s", None, f">= {TARGET / 1e3:.0f}k",
                            f"{r['slices']:,} slices in {r['seconds']:.2f} s (best of {repeats}; first "
                            f"{r['first']:.2f} s); {path}"))
            rows.append(Row("sqlite load", f"{label}: peak RSS", r["rss"], "MB", None, "",
                            f"trace {trace.stat().st_size / 1e6:.1f} MB"))
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

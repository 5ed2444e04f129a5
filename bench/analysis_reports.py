"""Canned reports and analyses on a large trace: each one's time on a synthetic 1M-command SD3
capture's aggregate, on the embedded (sqlite) backend and, beside it, on trace_processor running
the same SQL (when `RBLN_PERFETTO_TP_BIN` or the perfetto package's cached binary gives one). Each
backend opens the trace once; the loads are not part of the times.

    python -m bench.analysis_reports [--commands 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Row, judged, print_rows

TARGET_S = 0.25  # (issue 26: every report and analysis under a quarter second on the 1M-command trace)
BENCHMARK = "analysis reports"


def jobs() -> dict:
    """{row name: function of an open Trace}: every canned report, then every analysis."""
    from rbln_perfetto.analysis import critical_path, diff, idle, metrics, roofline, variance
    from rbln_perfetto.query import REPORTS

    out = {f"report {name}": (lambda tr, name=name: tr.report(name)) for name in REPORTS}
    out.update({
        "idle": lambda tr: idle(tr),
        "critical-path (segments)": lambda tr: critical_path(tr),
        "critical-path (layers)": lambda tr: critical_path(tr, by="layer"),
        "variance (submodules)": lambda tr: variance(tr),
        "variance (layers)": lambda tr: variance(tr, by="layer"),
        "diff (layers, trace vs itself)": lambda tr: diff(tr, tr),
        "check metrics": lambda tr: metrics(tr),
        "roofline (layers)": lambda tr: roofline(tr),
        "roofline (commands)": lambda tr: roofline(tr, by="command"),
    })
    return out


def _timed_open(trace, backend: str):
    from rbln_perfetto.query import open_trace

    start = time.perf_counter()
    tr = open_trace(trace, backend=backend)
    return tr, time.perf_counter() - start


def run(commands: int = 1_000_000, repeats: int = 3) -> list[Row]:
    import rbln_perfetto
    from bench.synthetic_capture import write_capture
    from rbln_perfetto.query.tp_backend import find_binary

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="rbln-analysis-"))
    opened = []
    try:
        capture = tmp / "capture.rblncap"
        written = write_capture(capture, commands)
        trace = rbln_perfetto.export(capture, tmp, per_invocation=False).aggregate_file
        backends = ["sqlite"] + (["trace_processor"] if find_binary() else [])
        loads = {}
        for backend in backends:
            tr, loads[backend] = _timed_open(trace, backend)
            opened.append(tr)
        size = f"{written['commands']:,} commands, {written['invocations']} invocations"
        for name, job in jobs().items():
            times = {backend: [] for backend in backends}
            for _ in range(repeats):  # the backends alternate, so that machine noise hits both alike
                for backend, tr in zip(backends, opened):
                    start = time.perf_counter()
                    job(tr)
                    times[backend].append(time.perf_counter() - start)
            median = {backend: statistics.median(t) for backend, t in times.items()}
            embedded = median["sqlite"]
            tp = median.get("trace_processor")
            rows.append(Row(BENCHMARK, f"{name} [sqlite]", embedded, "s", embedded / tp if tp else None,
                            judged(f"< {TARGET_S:g} s", embedded, TARGET_S, at_most=True, fmt="{:.2f}", unit=" s"),
                            f"{size}; median of {repeats} (min {min(times['sqlite']):.2f} s); load "
                            f"{loads['sqlite']:.1f} s not counted"
                            + ("; ratio = sqlite / trace_processor" if tp else
                               "; trace_processor not timed (set RBLN_PERFETTO_TP_BIN)")))
            if tp is not None:
                rows.append(Row(BENCHMARK, f"{name} [trace_processor]", tp, "s", None, "(yardstick)",
                                f"the same SQL (and Python) on trace_processor_shell; median of {repeats} (min "
                                f"{min(times['trace_processor']):.2f} s); load {loads['trace_processor']:.1f} s "
                                "not counted"))
    finally:
        for tr in opened:
            tr.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_rows(run(args.commands, args.repeats))


if __name__ == "__main__":
    main()

"""Analysis reports on a large trace: each report's time on a synthetic 1M-command SD3 capture's
aggregate, opened once on the embedded (sqlite) backend; the load is not part of the times.

    python -m bench.analysis_reports [--commands 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import Row, print_rows

TARGET_S = 2.0


def _reports():
    from rbln_perfetto.analysis import critical_path, diff, idle, metrics, variance

    return {
        "idle": lambda tr: idle(tr),
        "critical-path (segments)": lambda tr: critical_path(tr),
        "critical-path (layers)": lambda tr: critical_path(tr, by="layer"),
        "variance (submodules)": lambda tr: variance(tr),
        "variance (layers)": lambda tr: variance(tr, by="layer"),
        "diff (layers; the trace against itself)": lambda tr: diff(tr, tr),
        "check metrics": lambda tr: metrics(tr),
    }


def run(commands: int = 1_000_000, repeats: int = 3) -> list[Row]:
    import rbln_perfetto
    from bench.synthetic_capture import write_capture
    from rbln_perfetto.query import open_trace

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="rbln-analysis-"))
    try:
        capture = tmp / "capture.rblncap"
        written = write_capture(capture, commands)
        trace = rbln_perfetto.export(capture, tmp, per_invocation=False).aggregate_file
        start = time.perf_counter()
        with open_trace(trace, backend="sqlite") as tr:
            load = time.perf_counter() - start
            for name, report in _reports().items():
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    report(tr)
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                rows.append(Row("analysis reports", name, seconds, "s", None, f"< {TARGET_S:g} s",
                                f"{written['commands']:,} commands, {written['invocations']} invocations; median of "
                                f"{repeats} (min {min(times):.2f} s); sqlite backend (load {load:.1f} s, not counted)"))
    finally:
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

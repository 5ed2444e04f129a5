"""Answers to the questions people profile for, from the traces alone, as DataFrames:

    diff(base, cand)        what changed, per layer / submodule / op / device
    idle(trace)             where each device waits, and what the run was doing instead
    critical_path(trace)    the chain of work that sets the end-to-end time (`write_overlay` shows it in the UI)
    variance(trace)         how repeated calls vary, and the outlier calls
    whatif(trace, ...)      the run predicted with submodules sped up, slowed down or moved (`write_prediction`)
    roofline(trace)         each layer / command / submodule against its device's roofs (`plot_roofline`)
    check(cand, ...)        rules over a run's metrics for CI (`summary_spec_text`: the same as a trace-summary spec)

`ui_views` puts these answers into the Perfetto UI (startup commands for `open --view`), and
`ui_links` gives a row of any of them a UI link to its slice or range (`--links`).

Each is SQL (plus a little pandas) through the query backends, so both give identical rows, and
each reads what a device, an invocation, a command, a DMA, an untraced stretch and the run span are
from `query.trace_model`, so a merged multi-rank trace and a selected-steps run mean the same to
all of them. A trace argument is a trace file, a run directory (its aggregate.pb) or an open `Trace`.
"""

from .check import CheckResult, check, metrics, metrics_table
from .critical_path import critical_path
from .diff import diff, plot_diff
from .idle import idle
from .overlay import write_overlay
from .roofline import device_profiles, plot_roofline, roofline
from .stands_out import stands_out
from .trace_summary_spec import summary_spec_text, write_summary_spec
from .variance import variance
from .whatif import whatif
from .whatif_trace import write_prediction

__all__ = ["CheckResult", "check", "critical_path", "device_profiles", "diff", "idle", "metrics", "metrics_table",
           "plot_diff", "plot_roofline", "roofline", "stands_out", "summary_spec_text", "variance", "whatif",
           "write_overlay", "write_prediction", "write_summary_spec"]

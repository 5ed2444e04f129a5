"""Exporting: a capture file into Perfetto traces (one per invocation and one aggregate), and ranks merged.

capture file -> `export` (program templates, packets, interning, tracks) -> trace files committed
through one queue (`trace_file`); `merge` does the same for the captures of a run split across ranks.

The public names are re-exported by `rbln_perfetto` itself; this package's `__init__` imports none of its
modules, so importing one module (the exporter reading `recorder.capture`) does not import the others
through it.
"""

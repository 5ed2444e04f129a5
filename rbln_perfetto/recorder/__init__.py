"""Recording: the profiler the pipeline calls into, what to trace, user ranges, and the capture file.

pipeline run -> profiler hooks (`activation`) -> capture file (`capture`), in a run directory
(`run_directory`); `selection` says what is traced, `ranges` records the user's blocks, `host_info`
the machine. `activation.profile()` hands its capture to the exporter when it ends: the one place
where recording reaches into the next stage.

The public names are re-exported by `rbln_perfetto` itself; this package's `__init__` imports none of its
modules, so importing one module (the exporter reading `recorder.capture`) does not import the others
through it.
"""

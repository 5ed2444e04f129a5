"""trace_processor's reference traces, kept in the repository (tests/data/tp_reference, see its README):
each case is a small trace.pb with, for each query `<name>.sql`, the `<name>.csv` that Perfetto's
trace_processor_shell printed for it."""

from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "data" / "tp_reference"
# Named here rather than listed from the folder, so collecting the tests reads no files; a test that
# opens the whole folder compares its traces with these names.
CASES = ("compressed", "counters", "defaults_track_uuid", "device_tracks_nested", "flows",
         "monotonic_with_snapshot", "monotonic_without_snapshot", "overlap_on_one_track")


def reference_trace(case: str) -> Path:
    return REFERENCE / case / "trace.pb"

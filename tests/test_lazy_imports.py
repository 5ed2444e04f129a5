"""Loading a trace imports no more than the reader needs: pandas only once a DataFrame is asked for."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rbln_perfetto.reader import columns

TRACE = Path(__file__).parent / "data" / "tp_reference" / "device_tracks_nested" / "trace.pb"


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 50_000])
def test_distinct_without_pandas_is_what_pandas_factorize_gives(n, monkeypatch):
    values = np.random.default_rng(n).integers(0, 2**64 - 1, max(n // 10, 1), dtype=np.uint64)[
        np.random.default_rng(n + 1).integers(0, max(n // 10, 1), n)]
    codes, uniques = pd.factorize(values)
    monkeypatch.delitem(sys.modules, "pandas")  # as in a process that has not imported it
    got_uniques, got_first, got_codes = columns.distinct(values)
    assert "pandas" not in sys.modules
    np.testing.assert_array_equal(got_uniques, uniques)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_first, [np.flatnonzero(codes == k)[0] for k in range(len(uniques))])


def test_loading_a_small_trace_does_not_import_pandas():
    code = (
        "import sys, rbln_perfetto\n"
        f"t = rbln_perfetto.open_trace({str(TRACE)!r}, backend='sqlite')\n"
        "loaded = 'pandas' in sys.modules\n"
        "frame = t.query('select count(*) as n from slice')\n"
        "print(loaded, 'pandas' in sys.modules, int(frame.n[0]) > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True"]  # not for the load; then for the DataFrame the query returns

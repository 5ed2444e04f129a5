"""Finding trace_processor: our lookup of the `perfetto` package's cached download agrees with the package."""

import pytest

from rbln_perfetto.query import tp_backend


def test_prebuilt_cache_path_is_where_the_perfetto_package_caches(tmp_path, monkeypatch):
    from perfetto.prebuilts import perfetto_prebuilts

    monkeypatch.setenv("HOME", str(tmp_path))
    path = tp_backend.prebuilt_cache_path()
    if path is None:
        pytest.skip("the perfetto package has no trace_processor prebuilt for this machine")
    assert path.is_relative_to(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")

    def no_download(*args, **kwargs):
        raise AssertionError(f"the perfetto package does not cache at {path}: it tried to download {args}")

    monkeypatch.setattr(perfetto_prebuilts.subprocess, "check_call", no_download)
    # The package's own lookup finds the file we placed, so it looks exactly where we do.
    assert perfetto_prebuilts.get_perfetto_prebuilt(tp_backend._prebuilt_manifest()) == str(path)
    monkeypatch.delenv(tp_backend.TP_BIN_ENV, raising=False)
    assert tp_backend.find_binary() == str(path)

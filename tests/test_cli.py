"""The command line: the main job, and one-line errors."""

import re

import pytest
from trace_checks import check_trace

from rbln_perfetto.cli import main


def test_run_profiles_the_embedded_model_and_prints_files_and_summary(tmp_path, capsys):
    out = tmp_path / "profile-out"
    assert main(["run", "--steps", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"traces in {out}/:" in text and "aggregate.pb  (whole run: 8 invocations" in text
    assert "0002_text_encoder_3_0.pb" in text and "per device:" in text and "per submodule:" in text
    assert (out / "image.png").stat().st_size > 0
    for path in out.glob("*.pb"):
        check_trace(path)
    # The default split puts text_encoder_3 on device 1.
    assert re.search(r"^\s*text_encoder_3\s+1\s+2\s", text, re.M)


def test_run_reuses_the_compiled_pipeline(tmp_path, capsys, monkeypatch):
    assert main(["run", "--steps", "1", "--out", str(tmp_path / "a"), "--guidance", "1.0"]) == 0
    import pipeline.pipeline_sd3 as mod

    monkeypatch.setattr(mod, "compile_submodule", lambda *a, **k: pytest.fail("compiled again"))
    assert main(["run", "--steps", "1", "--out", str(tmp_path / "b"), "--guidance", "1.0"]) == 0
    assert "whole run: 5 invocations" in capsys.readouterr().out


def test_debug_shows_the_traceback():
    with pytest.raises(ValueError):
        main(["--debug", "run", "--config", "{not json"])

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


def test_export_flags_reach_the_export_options(tmp_path, capsys):
    from golden_export import CAPTURE

    assert main(["export", str(CAPTURE), "-o", str(tmp_path / "agg"), "--no-per-invocation",
                 "--compression-level", "1"]) == 0
    assert sorted(p.name for p in (tmp_path / "agg").glob("*.pb")) == ["aggregate.pb"]
    assert main(["export", str(CAPTURE), "-o", str(tmp_path / "per"), "--no-aggregate"]) == 0
    per = sorted(p.name for p in (tmp_path / "per").glob("*.pb"))
    assert len(per) == 8 and "aggregate.pb" not in per
    assert main(["export", str(CAPTURE), "-o", str(tmp_path / "level9"), "--no-per-invocation",
                 "--compression-level", "9"]) == 0
    # A different zlib level gives a different (valid) file: the flag reached the compressor.
    assert (tmp_path / "agg" / "aggregate.pb").read_bytes() != (tmp_path / "level9" / "aggregate.pb").read_bytes()
    for path in [tmp_path / "agg" / "aggregate.pb", tmp_path / "level9" / "aggregate.pb"]:
        check_trace(path)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["export", str(CAPTURE), "--compression-level", "12"])
    assert "'12' is not a zlib level; valid: 0..9" in capsys.readouterr().err
    assert main(["export", str(CAPTURE), "-o", str(tmp_path / "none"), "--no-per-invocation", "--no-aggregate"]) == 2
    assert "leave nothing to write" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()

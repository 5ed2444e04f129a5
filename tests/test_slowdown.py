"""The test-only slowdown knob (RBLN_PIPELINE_SLOWDOWN): bad values are named, slowed programs compute the
same image, and a slowed run says so in its provenance."""

import numpy as np
import pytest
from conftest import run
from trace_checks import check_trace, track_name

import rbln_perfetto
from pipeline import slowdown
from pipeline.config import ConfigError


def test_parse_reads_factors_per_submodule():
    assert slowdown.parse("") == {}
    assert slowdown.parse("transformer=1.25, vae=1") == {"transformer": 1.25, "vae": 1.0}
    assert slowdown.describe({"vae": 1.1, "transformer": 1.25, "text_encoder": 1.0}) == "transformer=1.25,vae=1.1"


@pytest.mark.parametrize("raw, named", [
    ("unet=1.5", "'unet' is not valid; valid: text_encoder, text_encoder_2, text_encoder_3, transformer, vae"),
    ("transformer=0.8", "transformer='0.8' is not valid; valid: a number >= 1"),
    ("transformer=nan", "transformer='nan' is not valid"),
    ("transformer=fast", "transformer='fast' is not valid"),
    ("transformer", "part 'transformer' is not valid; valid: SUBMODULE=FACTOR"),
    ("vae=1.1,vae=1.2", "names 'vae' twice"),
])
def test_bad_values_name_the_part_and_what_is_valid(raw, named):
    with pytest.raises(ConfigError, match="RBLN_PIPELINE_SLOWDOWN") as err:
        slowdown.parse(raw)
    assert named in str(err.value)


def test_a_bad_knob_fails_the_call_before_anything_runs(make_pipe, monkeypatch, tmp_path):
    pipe = make_pipe()
    monkeypatch.setenv(slowdown.ENV_SLOWDOWN, "transformers=2")
    with pytest.raises(ConfigError, match="'transformers' is not valid"):
        with rbln_perfetto.profile(tmp_path / "out"):
            run(pipe, steps=1)


def test_slowed_commands_compute_the_same_image_and_the_trace_says_it_was_slowed(make_pipe, monkeypatch, tmp_path):
    pipe = make_pipe()
    plain = run(pipe, steps=1)
    program = pipe.transformer.compiled
    assert "_spin(" not in program.source

    monkeypatch.setenv(slowdown.ENV_SLOWDOWN, "transformer=1.5")
    with rbln_perfetto.profile(tmp_path / "slowed") as prof:
        slowed = run(pipe, steps=1)
    np.testing.assert_array_equal(plain, slowed)
    assert program.source.count("_spin(_c0)") == 2 * len(program.info.commands)  # run and run_timed
    assert "_spin(" not in pipe.vae.compiled.source

    for path in [prof.aggregate_file, *prof.invocation_files]:
        trace = check_trace(path)
        (run_slice,) = [s for s in trace.slices if track_name(trace, s) == "Run"]
        assert run_slice.args["debug.slowdown"] == "transformer=1.5"

    monkeypatch.delenv(slowdown.ENV_SLOWDOWN)
    with rbln_perfetto.profile(tmp_path / "plain") as prof:
        again = run(pipe, steps=1)
    np.testing.assert_array_equal(plain, again)
    assert "_spin(" not in program.source  # back to the plain program once the knob is off
    trace = check_trace(prof.aggregate_file)
    (run_slice,) = [s for s in trace.slices if track_name(trace, s) == "Run"]
    assert "debug.slowdown" not in run_slice.args

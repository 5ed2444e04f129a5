"""A pipeline call that cannot fit what was compiled fails before any submodule runs, saying why,
and leaves nothing behind: no run directory, no recorded invocation, no trace."""

import pytest
import torch
from conftest import PROMPT, run

import rbln_perfetto
from pipeline import ConfigError
from rbln_perfetto.recorder.capture import read_info

CASES = [
    (7.0, 1.0, r"guidance_scale=1\.0 does not fit the compiled transformer: it was compiled with "
               r"guidance_scale=7\.0, for classifier-free guidance \(batch 2\)"),
    (1.0, 7.0, r"guidance_scale=7\.0 asks for classifier-free guidance .* compiled with guidance_scale=1\.0, "
               r"without it \(batch 1\)"),
]


@pytest.mark.parametrize("compiled,called,message", CASES, ids=["compiled-with-cfg", "compiled-without-cfg"])
def test_guidance_that_does_not_fit_the_compiled_batch_fails_first(make_pipe, tmp_path, monkeypatch,
                                                                   compiled, called, message):
    pipe = make_pipe({"guidance_scale": compiled})

    monkeypatch.setenv("RBLN_PROFILER", "1")
    monkeypatch.setenv("RBLN_PROFILER_DIR", str(tmp_path / "env"))
    with pytest.raises(ConfigError, match=message):
        run(pipe, guidance=called)
    assert not (tmp_path / "env").exists()  # the profiler was never asked: no run directory
    monkeypatch.delenv("RBLN_PROFILER")

    with pytest.raises(ConfigError, match=message):
        with rbln_perfetto.profile(tmp_path / "block") as prof:
            run(pipe, guidance=called)
    info = read_info(prof.capture_file)
    assert (info.invocations, info.host_events, len(info.pipelines)) == (0, 0, 0)  # nothing ran, not even a tokenizer
    assert not [p.name for p in (tmp_path / "block").glob("*.pb") if p.name != "aggregate.pb"]


def test_guidance_given_positionally_or_by_default_is_checked_too(make_pipe):
    pipe = make_pipe({"guidance_scale": 1.0})
    # diffusers' signature: prompt, prompt_2, prompt_3, height, width, num_inference_steps, sigmas, guidance_scale
    with pytest.raises(ConfigError, match=r"guidance_scale=7\.5 asks for classifier-free guidance"):
        pipe(PROMPT, None, None, None, None, 2, None, 7.5, output_type="np")
    with pytest.raises(ConfigError, match=r"guidance_scale=7\.0 asks"):  # diffusers' default
        pipe(PROMPT, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0))

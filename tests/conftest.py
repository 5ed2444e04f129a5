"""Shared fixtures: one embedded tiny SD3 per session, compiled pipelines cached per rbln_config."""

import json
import os
import warnings

import pytest

# Nothing may reach a model hub from the tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

from pipeline import RBLNStableDiffusion3Pipeline, build_tiny_sd3  # noqa: E402

PROMPT = "a photo of a cat holding a sign that says hello world"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path_factory):
    monkeypatch.delenv("RBLN_PROFILER", raising=False)
    for name in ("RBLN_PROFILER_DIR", "RBLN_PROFILER_STEPS", "RBLN_PROFILER_CALLS", "RBLN_PROFILER_SUBMODULES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RBLN_PERFETTO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_tiny_sd3(tmp_path_factory.mktemp("tiny-sd3"))


@pytest.fixture(scope="session")
def compiled_dirs(tmp_path_factory, tiny_model):
    """rbln_config (as JSON) -> a saved compiled pipeline, compiled once per session."""
    cache = {}

    def get(rbln_config):
        key = json.dumps(rbln_config, sort_keys=True)
        if key not in cache:
            pipe = RBLNStableDiffusion3Pipeline.from_pretrained(tiny_model, export=True, rbln_config=rbln_config)
            path = tmp_path_factory.mktemp("compiled")
            pipe.save_pretrained(path)
            cache[key] = path
        return cache[key]

    return get


@pytest.fixture
def make_pipe(compiled_dirs):
    def make(rbln_config=None, **overrides):
        pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(rbln_config or {}), export=False,
                                                            rbln_config=overrides or None)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


def run(pipe, steps=2, guidance=7.0, **kwargs):
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images

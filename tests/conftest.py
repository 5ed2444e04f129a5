"""Shared fixtures: one compile cache per session, which the tests and the command-line subprocesses
they start both use (RBLN_PERFETTO_CACHE): the embedded tiny SD3 built once into it, each rbln_config
compiled once into it (keyed by the config as the pipeline normalizes it, so `{}` and
`{"guidance_scale": 7.0}` are one compile), and each profiled run that tests only read made once."""

import os
import warnings

import pytest

# Nothing may reach a model hub from the tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

import rbln_perfetto  # noqa: E402
from pipeline import RBLNStableDiffusion3Pipeline  # noqa: E402
from pipeline.compile_cache import compiled_dir, embedded_model  # noqa: E402
from pipeline.config import RBLNConfig  # noqa: E402

PROMPT = "a photo of a cat holding a sign that says hello world"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """The session's compile cache, in the environment for the whole session (subprocesses inherit it)."""
    path = tmp_path_factory.getbasetemp() / "cache"
    os.environ["RBLN_PERFETTO_CACHE"] = str(path)
    return path


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, session_cache):
    monkeypatch.delenv("RBLN_PROFILER", raising=False)
    monkeypatch.delenv("RBLN_PIPELINE_SLOWDOWN", raising=False)
    for name in ("RBLN_PROFILER_DIR", "RBLN_PROFILER_STEPS", "RBLN_PROFILER_CALLS", "RBLN_PROFILER_SUBMODULES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RBLN_PERFETTO_CACHE", str(session_cache))  # (again: a test may have changed it)


@pytest.fixture(scope="session")
def tiny_model(session_cache):
    """The embedded tiny SD3 where `rbln-perfetto run` looks for it in the session's cache."""
    return embedded_model("tiny")


def config_key(rbln_config) -> str:
    """An rbln_config as the pipeline compiles it: configs that compile alike have one key."""
    return repr(sorted(RBLNConfig.from_dict(rbln_config or {}).to_dict().items()))


@pytest.fixture(scope="session")
def compiled_dirs(tiny_model):
    """rbln_config -> a saved compiled pipeline: the session cache's entry, compiled once per session."""
    cache = {}

    def get(rbln_config):
        key = config_key(rbln_config)
        if key not in cache:
            cache[key] = compiled_dir(tiny_model, rbln_config)
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


@pytest.fixture(scope="session")
def shared_run(compiled_dirs, tmp_path_factory):
    """(rbln_config, steps) -> the profiler of one run of PROMPT (guidance 7.0, seed 0), profiled once per
    session: for tests that only read what it wrote (they must not write into its directory)."""
    runs = {}

    def get(rbln_config, steps=2):
        key = (config_key(rbln_config), steps)
        if key not in runs:
            pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(rbln_config))
            pipe.set_progress_bar_config(disable=True)
            with rbln_perfetto.profile(tmp_path_factory.mktemp("shared-run")) as prof:
                run(pipe, steps=steps)
            runs[key] = prof
        return runs[key]

    return get


def run(pipe, steps=2, guidance=7.0, **kwargs):
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images

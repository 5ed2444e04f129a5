"""Shared fixtures: one compile cache per session, which the tests and the command-line subprocesses
they start both use (RBLN_PERFETTO_CACHE): the embedded tiny SD3 built once into it, each rbln_config
compiled once into it (keyed by the config as the pipeline normalizes it, so `{}` and
`{"guidance_scale": 7.0}` are one compile), and each profiled run that tests only read made once.

The suite runs in worker processes (pytest-xdist, `-n 2 --dist loadfile` in pyproject.toml: a file's
tests stay in one worker, so module fixtures are made once). The workers share the one cache: it lies in
the run's base temporary directory, above each worker's own, and compile_cache locks each entry, so a
config is compiled once for the whole run whichever worker or subprocess asks first; `shared_run` stores
its runs there the same way."""

import hashlib
import os
import pickle
import shutil
import warnings

import pytest

# Nothing may reach a model hub from the tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
warnings.filterwarnings("ignore", category=FutureWarning)

# One thread per worker (and for the processes a test starts) where the workers share the cores: two
# workers of two threads each on two cores would spend their time waiting for each other.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

if WORKER and os.environ["OMP_NUM_THREADS"].isdigit():
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

import rbln_perfetto  # noqa: E402
from pipeline import RBLNStableDiffusion3Pipeline  # noqa: E402
from pipeline.compile_cache import compiled_dir, embedded_model, locked  # noqa: E402
from pipeline.config import RBLNConfig  # noqa: E402

PROMPT = "a photo of a cat holding a sign that says hello world"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    """The session's compile cache, in the environment for the whole session (subprocesses inherit it).
    Under xdist, each worker's base temporary directory lies in the run's: the workers share the cache."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if WORKER else base) / "cache"
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
    return embedded_model("tiny", cache=session_cache)


def config_key(rbln_config) -> str:
    """An rbln_config as the pipeline compiles it: configs that compile alike have one key."""
    return repr(sorted(RBLNConfig.from_dict(rbln_config or {}).to_dict().items()))


@pytest.fixture(scope="session")
def compiled_dirs(tiny_model, session_cache):
    """rbln_config -> a saved compiled pipeline: the session cache's entry, compiled once per session
    (whichever worker asks first compiles it; a test that points RBLN_PERFETTO_CACHE elsewhere still gets
    the session's entry)."""
    cache = {}

    def get(rbln_config):
        key = config_key(rbln_config)
        if key not in cache:
            cache[key] = compiled_dir(tiny_model, rbln_config, cache=session_cache)
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


class SharedRun:
    """A profiled run as the tests read it: its capture and the traces its profile() block exported."""

    def __init__(self, result, capture_file):
        self.result, self.capture_file = result, capture_file
        self.out_dir = result.out_dir
        self.invocation_files = result.invocation_files
        self.aggregate_file = result.aggregate_file


@pytest.fixture(scope="session")
def shared_run(compiled_dirs, session_cache):
    """(rbln_config, steps) -> one run of PROMPT (guidance 7.0, seed 0), profiled once for the whole test
    run into the session's cache (the first worker to ask profiles it, under a lock; the others read what
    it stored): for tests that only read what it wrote (they must not write into its directory)."""
    runs = {}

    def get(rbln_config, steps=2):
        key = (config_key(rbln_config), steps)
        if key not in runs:
            where = session_cache / "runs" / hashlib.sha256(repr(key).encode()).hexdigest()[:16]
            stored = where / "run.pickle"
            with locked(where):
                if not stored.is_file():
                    shutil.rmtree(where / "out", ignore_errors=True)  # (a session that stopped midway)
                    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(rbln_config))
                    pipe.set_progress_bar_config(disable=True)
                    with rbln_perfetto.profile(where / "out") as prof:
                        run(pipe, steps=steps)
                    partial = where / "run.pickle.tmp"
                    partial.write_bytes(pickle.dumps((prof.result, prof.capture_file)))
                    os.replace(partial, stored)
            runs[key] = SharedRun(*pickle.loads(stored.read_bytes()))
        return runs[key]

    return get


def run(pipe, steps=2, guidance=7.0, **kwargs):
    return pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, output_type="np",
                generator=torch.Generator().manual_seed(0), **kwargs).images

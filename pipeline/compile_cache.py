"""Reuse compiled pipelines between runs: compile once per (model, rbln_config), then load.

The cache lives under `$RBLN_PERFETTO_CACHE` (default `~/.cache/rbln-perfetto`). An entry is
written to a temporary directory and renamed into place, so an interrupted compile never leaves a
half-written entry behind. An entry is keyed by the config as the pipeline normalizes it (`{}` and
`{"guidance_scale": 7.0}` are one entry). Processes sharing the cache (the ranks of one torchrun, test
workers, a test and the CLI it starts) take a lock per entry, so one of them compiles and the others
wait and load what it stored, instead of all compiling the same thing at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .compiler import PLAN_VERSION
from .config import RBLNConfig
from .embedded_model import build_tiny_sd3
from .pipeline_sd3 import RBLN_CONFIG_FILE, RBLNStableDiffusion3Pipeline


def cache_dir() -> Path:
    return Path(os.environ.get("RBLN_PERFETTO_CACHE") or Path.home() / ".cache" / "rbln-perfetto")


@contextmanager
def locked(path: Path):
    """An exclusive lock on `path` across the processes of this machine, released when the block ends or
    the process dies. The lock file lives in the temporary directory, not in the cache: taking a lock
    changes nothing in the cache (a run that fails early leaves it as it was). Where no lock can be had
    (not POSIX, no writable temporary directory) the block runs unlocked: renames still keep entries whole."""
    lock = None
    try:
        import fcntl

        locks = Path(tempfile.gettempdir()) / f"rbln-perfetto-locks-{os.getuid()}"
        locks.mkdir(mode=0o700, exist_ok=True)
        name = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
        lock = open(locks / f"{name}.lock", "a")
    except (ImportError, AttributeError, OSError):
        pass
    if lock is None:
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def embedded_model(scale: str = "tiny", seed: int = 0, *, cache: str | os.PathLike | None = None) -> str:
    """The embedded SD3 of `scale`, built into the cache (`cache`, default `cache_dir()`) on first use, by one
    process at a time: another one writing the same files while this one loads them would tear them."""
    path = Path(cache or cache_dir()) / "models" / f"{scale}-seed{seed}"
    with locked(path):
        return build_tiny_sd3(path, scale=scale, seed=seed)


def _key(model_dir: Path, cfg: RBLNConfig) -> str:
    index = model_dir / "model_index.json"
    stat = index.stat()
    ident = {
        "model": str(model_dir.resolve()),
        "stamp": [stat.st_mtime_ns, stat.st_size],
        "rbln_config": cfg.to_dict(),
        "plan": PLAN_VERSION,
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def load_or_compile(model_dir: str | os.PathLike, rbln_config: dict | None = None) -> RBLNStableDiffusion3Pipeline:
    model_dir = Path(model_dir)
    cfg = RBLNConfig.from_dict(rbln_config)
    entry = cache_dir() / "compiled" / _key(model_dir, cfg)
    if (entry / RBLN_CONFIG_FILE).is_file():  # stored whole (renamed into place): no lock needed to load it
        try:
            return RBLNStableDiffusion3Pipeline.from_pretrained(entry, export=False)
        except (ValueError, OSError, RuntimeError):
            pass  # from another version: compile it again
    with locked(entry):
        if (entry / RBLN_CONFIG_FILE).is_file():
            try:  # another process stored it while this one waited (or it is the stale one)
                return RBLNStableDiffusion3Pipeline.from_pretrained(entry, export=False)
            except (ValueError, OSError, RuntimeError):
                shutil.rmtree(entry, ignore_errors=True)
        return _compile_into(entry, model_dir, cfg)


def compiled_dir(model_dir: str | os.PathLike, rbln_config: dict | None = None, *,
                 cache: str | os.PathLike | None = None) -> Path:
    """The entry of `model_dir` compiled with `rbln_config` in the cache (`cache`, default `cache_dir()`),
    compiled into it first when missing: a saved pipeline for `from_pretrained`, shared with every process
    that uses the same cache."""
    model_dir = Path(model_dir)
    cfg = RBLNConfig.from_dict(rbln_config)
    entry = Path(cache or cache_dir()) / "compiled" / _key(model_dir, cfg)
    if not (entry / RBLN_CONFIG_FILE).is_file():
        with locked(entry):
            if not (entry / RBLN_CONFIG_FILE).is_file():  # not stored by another process meanwhile
                _compile_into(entry, model_dir, cfg)
    return entry


def _compile_into(entry: Path, model_dir: Path, cfg: RBLNConfig) -> RBLNStableDiffusion3Pipeline:
    """The pipeline compiled and stored as `entry`, written beside it and renamed into place."""
    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(model_dir, export=True, rbln_config=cfg.to_dict())
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    try:
        os.replace(tmp, entry)
    except OSError:  # another process stored the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
    return pipe

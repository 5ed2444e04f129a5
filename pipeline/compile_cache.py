"""Reuse compiled pipelines between runs: compile once per (model, rbln_config), then load.

The cache lives under `$RBLN_PERFETTO_CACHE` (default `~/.cache/rbln-perfetto`). An entry is
written to a temporary directory and renamed into place, so an interrupted compile never leaves a
half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from .compiler import PLAN_VERSION
from .config import RBLNConfig
from .embedded_model import build_tiny_sd3
from .pipeline_sd3 import RBLN_CONFIG_FILE, RBLNStableDiffusion3Pipeline


def cache_dir() -> Path:
    return Path(os.environ.get("RBLN_PERFETTO_CACHE") or Path.home() / ".cache" / "rbln-perfetto")


def embedded_model(scale: str = "tiny", seed: int = 0) -> str:
    """The embedded SD3 of `scale`, built into the cache on first use."""
    return build_tiny_sd3(cache_dir() / "models" / f"{scale}-seed{seed}", scale=scale, seed=seed)


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
    if (entry / RBLN_CONFIG_FILE).is_file():
        try:
            return RBLNStableDiffusion3Pipeline.from_pretrained(entry, export=False)
        except (ValueError, OSError, RuntimeError):
            shutil.rmtree(entry, ignore_errors=True)  # from another version: compile it again
    return _compile_into(entry, model_dir, cfg)


def compiled_dir(model_dir: str | os.PathLike, rbln_config: dict | None = None) -> Path:
    """The cache entry of `model_dir` compiled with `rbln_config` (compiled into it first when missing): a
    saved pipeline for `from_pretrained`, shared with every process that uses the same cache."""
    model_dir = Path(model_dir)
    cfg = RBLNConfig.from_dict(rbln_config)
    entry = cache_dir() / "compiled" / _key(model_dir, cfg)
    if not (entry / RBLN_CONFIG_FILE).is_file():
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

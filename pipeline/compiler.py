"""Compile SD3 submodules (trace + partition) and save/load the compiled artifacts.

A compiled submodule directory holds `compiled.pt2` (the exported graph with its weights),
`plan.json` (input shapes, command budget and the command table) and the model's `config.json`.
Loading reads the graph back and re-emits code for the saved plan; it never traces the model again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .config import RBLNConfig
from .contract import CommandSpec
from .dtypes import dtype_name, torch_dtype
from .graph_capture import InputSpec, export_submodule
from .library_logging import quiet_loading
from .partition import Partition, partition
from .placement import MemoryPlan, memory_plan
from .submodules import SUBMODULE_KINDS

PLAN_VERSION = 1
SHIPPED_CONFIGS = Path(__file__).parent / "model_configs"


@dataclass(frozen=True)
class CompiledArtifact:
    """One compiled submodule as saved and loaded: the traced graph, its command partition, its input
    buffers and its model config (not yet bound to a device: that is `runtime.CompiledSubmodule`)."""

    exported: torch.export.ExportedProgram
    partition: Partition
    specs: list[InputSpec]
    config: object


def compile_submodule(name: str, model: torch.nn.Module, cfg: RBLNConfig, configs: dict) -> CompiledArtifact:
    """Trace and partition one submodule."""
    kind = SUBMODULE_KINDS[name]
    specs = kind.input_specs(name, cfg, configs, torch_dtype(cfg.dtype))
    ep = export_submodule(kind.adapter(model), specs)
    return CompiledArtifact(ep, partition(name, ep.module(), cfg.command_budget), specs, configs[name])


def save_compiled(directory: Path, compiled: CompiledArtifact) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.export.save(compiled.exported, directory / "compiled.pt2")
    part = compiled.partition
    plan = {
        "version": PLAN_VERSION,
        "submodule": part.submodule,
        "command_budget": part.budget,
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": dtype_name(s.dtype)} for s in compiled.specs],
        "commands": [asdict(c) for c in part.commands],
    }
    (directory / "plan.json").write_text(json.dumps(plan))
    config = compiled.config
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    (directory / "config.json").write_text(json.dumps(config_dict, indent=2, default=str))


def load_compiled(directory: Path) -> CompiledArtifact:
    """Read a saved submodule back (never tracing the model again)."""
    plan = json.loads((directory / "plan.json").read_text())
    if plan.get("version") != PLAN_VERSION:
        raise ValueError(
            f"{directory}/plan.json has plan version {plan.get('version')!r}; this rbln-perfetto reads version "
            f"{PLAN_VERSION}: compile the model again with export=True"
        )
    ep = torch.export.load(directory / "compiled.pt2")
    part = partition(plan["submodule"], ep.module(), plan["command_budget"])
    saved = [CommandSpec(**c) for c in plan["commands"]]
    if list(part.commands) != saved:
        raise ValueError(
            f"{directory} does not reproduce its saved command plan ({len(saved)} commands saved, "
            f"{len(part.commands)} now); it was compiled by another version: compile again with export=True"
        )
    specs = [InputSpec(i["name"], tuple(i["shape"]), torch_dtype(i["dtype"])) for i in plan["inputs"]]
    config = SUBMODULE_KINDS[plan["submodule"]].config_from_dict(json.loads((directory / "config.json").read_text()))
    return CompiledArtifact(ep, part, specs, config)


def _config_dir(config_dir_or_name: str | os.PathLike) -> Path:
    path = Path(config_dir_or_name)
    if path.is_dir():
        return path
    shipped = SHIPPED_CONFIGS / str(config_dir_or_name)
    if shipped.is_dir():
        return shipped
    names = sorted(p.name for p in SHIPPED_CONFIGS.iterdir() if p.is_dir())
    raise ValueError(
        f"config_dir_or_name={str(config_dir_or_name)!r} is neither a diffusers SD3 directory nor a shipped "
        f"config; valid names: {', '.join(names)}"
    )


def meta_models(config_dir: Path, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """Instantiate every SD3 submodule from its config.json on the meta device: shapes, no weights."""
    with torch.device("meta"), quiet_loading():
        models = {name: kind.meta_model(config_dir / name) for name, kind in SUBMODULE_KINDS.items()}
        return {name: m.to(dtype).eval() for name, m in models.items()}


def compile_on_meta(config_dir_or_name: str | os.PathLike, cfg: RBLNConfig) -> dict[str, CompiledArtifact]:
    """Compile every submodule from its config alone, on the meta device: the real programs' commands
    and sizes, without reading (or having) any weights. `config_dir_or_name`: a diffusers SD3
    directory, or a shipped config name such as "sd3-medium"."""
    models = meta_models(_config_dir(config_dir_or_name), torch_dtype(cfg.dtype))
    configs = {name: m.config for name, m in models.items()}
    return {name: compile_submodule(name, models[name], cfg, configs) for name in SUBMODULE_KINDS}


def plan_memory(config_dir_or_name: str | os.PathLike, rbln_config: dict | RBLNConfig | None = None) -> MemoryPlan:
    """Device memory plan for a placement, from model configs alone (no weights are read).

    Every submodule is compiled on the meta device with the configured shapes (`compile_on_meta`),
    so the weight and activation figures are those of the real compiled programs.
    """
    cfg = RBLNConfig.from_dict(rbln_config)
    compiled = compile_on_meta(config_dir_or_name, cfg)
    return memory_plan(cfg, {name: (c.partition.weight_bytes, c.partition.peak_live_bytes) for name, c in compiled.items()})

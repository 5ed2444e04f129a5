"""Compile SD3 submodules (trace + partition) and save/load the compiled artifacts.

A compiled submodule directory holds `compiled.pt2` (the exported graph with its weights),
`plan.json` (input shapes, command budget and the command table) and the model's `config.json`.
Loading reads the graph back and re-emits code for the saved plan; it never traces the model again.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from .config import SUBMODULES, RBLNConfig
from .events import CommandSpec
from .graph_capture import InputSpec, export_submodule, input_specs
from .library_logging import quiet_loading
from .partition import Partition, partition
from .placement import MemoryPlan, memory_plan

PLAN_VERSION = 1
SHIPPED_CONFIGS = Path(__file__).parent / "model_configs"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def compile_submodule(name: str, model: torch.nn.Module, cfg: RBLNConfig, configs: dict):
    """Trace and partition one submodule. Returns (exported program, partition, input specs)."""
    specs = input_specs(name, cfg, configs, DTYPES[cfg.dtype])
    ep = export_submodule(name, model, specs)
    return ep, partition(name, ep.module(), cfg.command_budget), specs


def save_compiled(directory: Path, ep, part: Partition, specs: list[InputSpec], config) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    torch.export.save(ep, directory / "compiled.pt2")
    plan = {
        "version": PLAN_VERSION,
        "submodule": part.submodule,
        "command_budget": part.budget,
        "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype).replace("torch.", "")} for s in specs],
        "commands": [asdict(c) for c in part.commands],
    }
    (directory / "plan.json").write_text(json.dumps(plan))
    config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    (directory / "config.json").write_text(json.dumps(config_dict, indent=2, default=str))


def load_compiled(directory: Path):
    """Read a saved submodule back: (exported program, partition, input specs, config dict)."""
    plan = json.loads((directory / "plan.json").read_text())
    if plan.get("version") != PLAN_VERSION:
        raise ValueError(
            f"{directory}/plan.json has plan version {plan.get('version')!r}; this rbln-perfetto reads version "
            f"{PLAN_VERSION}: compile the model again with export=True"
        )
    ep = torch.export.load(directory / "compiled.pt2")
    part = partition(plan["submodule"], ep.module(), plan["command_budget"])
    saved = [CommandSpec(**c) for c in plan["commands"]]
    if part.commands != saved:
        raise ValueError(
            f"{directory} does not reproduce its saved command plan ({len(saved)} commands saved, "
            f"{len(part.commands)} now); it was compiled by another version: compile again with export=True"
        )
    specs = [InputSpec(i["name"], tuple(i["shape"]), DTYPES[i["dtype"]] if i["dtype"] in DTYPES else getattr(torch, i["dtype"]))
             for i in plan["inputs"]]
    config = json.loads((directory / "config.json").read_text())
    return ep, part, specs, config


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
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    with torch.device("meta"), quiet_loading():
        models = {
            "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config_dir / "text_encoder")),
            "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config_dir / "text_encoder_2")),
            "text_encoder_3": T5EncoderModel(T5Config.from_pretrained(config_dir / "text_encoder_3")),
            "transformer": SD3Transformer2DModel.from_config(SD3Transformer2DModel.load_config(config_dir / "transformer")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae")),
        }
        return {name: m.to(dtype).eval() for name, m in models.items()}


def plan_memory(config_dir_or_name: str | os.PathLike, rbln_config: dict | RBLNConfig | None = None) -> MemoryPlan:
    """Device memory plan for a placement, from model configs alone (no weights are read).

    `config_dir_or_name`: a diffusers SD3 directory, or a shipped config name such as "sd3-medium".
    Every submodule is instantiated on the meta device and compiled with the configured shapes,
    so the weight and activation figures are those of the real compiled programs.
    """
    cfg = RBLNConfig.from_dict(rbln_config)
    models = meta_models(_config_dir(config_dir_or_name), DTYPES[cfg.dtype])
    configs = {name: m.config for name, m in models.items()}
    usage = {}
    for name in SUBMODULES:
        _, part, _ = compile_submodule(name, models[name], cfg, configs)
        usage[name] = (part.weight_bytes, part.peak_live_bytes)
    return memory_plan(cfg, usage)

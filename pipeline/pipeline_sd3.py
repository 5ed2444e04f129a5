"""`RBLNStableDiffusion3Pipeline`: diffusers' SD3 pipeline over device-split compiled submodules.

The denoising loop, guidance and scheduler are diffusers' own (`StableDiffusion3Pipeline.__call__`
runs unchanged); only the five submodules are replaced by runtime modules that run compiled
command programs on their logical devices. Usage mirrors optimum-rbln:

    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(model_dir, export=True, rbln_config={...})
    pipe.save_pretrained("sd3-compiled")
    pipe = RBLNStableDiffusion3Pipeline.from_pretrained("sd3-compiled", export=False)
"""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path

import torch

from .library_logging import import_diffusers_quietly, quiet_loading

import_diffusers_quietly()

from diffusers import StableDiffusion3Pipeline  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from .compiler import CompiledArtifact, compile_submodule, load_compiled, plan_memory, save_compiled  # noqa: E402
from .config import SUBMODULES, ConfigError, RBLNConfig  # noqa: E402
from .contract import DeviceInfo, PipelineInfo  # noqa: E402
from .device_profiles import from_config as profile_from_config  # noqa: E402
from .dtypes import torch_dtype  # noqa: E402
from .graph_capture import image_size  # noqa: E402
from .placement import memory_plan, torch_devices  # noqa: E402
from .profiling_hooks import ActiveCall, host_recording_call, profiled_call  # noqa: E402
from .runtime import CompiledSubmodule, RuntimeProbe  # noqa: E402
from . import slowdown  # noqa: E402
from .submodules import SUBMODULE_KINDS  # noqa: E402

RBLN_CONFIG_FILE = "rbln_config.json"
TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")
# Called once per denoising step: its calls within a pipeline call are the step numbers (diffusers' loop index).
STEP_SUBMODULE = "transformer"
# Keys fixed when the graph is traced; a compiled artifact cannot change them.
COMPILE_TIME_KEYS = ("img_height", "img_width", "batch_size", "guidance_scale", "max_seq_len", "command_budget", "dtype")


def _local_model_dir(model_id: str | os.PathLike, what: str) -> Path:
    path = Path(model_id)
    if not path.is_dir():
        raise ValueError(
            f"{what}={str(model_id)!r} is not a local directory. Model hubs are not reachable from here: pass a "
            "diffusers-format SD3 directory, or build the embedded one with pipeline.build_tiny_sd3(path)"
        )
    return path


class RBLNStableDiffusion3Pipeline(StableDiffusion3Pipeline):
    """SD3 with each submodule compiled to device commands and placed on a logical device."""

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(cls, model_id: str | os.PathLike, *, export: bool = False,
                        rbln_config: dict | None = None) -> RBLNStableDiffusion3Pipeline:
        """`export=True`: compile a diffusers SD3 directory; `export=False`: load a compiled one."""
        if export:
            return cls._compile(_local_model_dir(model_id, "model_id"), RBLNConfig.from_dict(rbln_config))
        return cls._load(_local_model_dir(model_id, "model_id"), rbln_config)

    @classmethod
    def _compile(cls, model_dir: Path, cfg: RBLNConfig):
        devices = torch_devices(cfg)
        if not (model_dir / "model_index.json").is_file():
            raise ValueError(f"{model_dir} has no model_index.json: it is not a diffusers SD3 directory")
        # A placement that overflows a device fails before any weight is read or compiled: the plan
        # comes from the same programs compiled from the configs alone, on the meta device.
        plan_memory(model_dir, cfg).check()
        with quiet_loading():
            base = StableDiffusion3Pipeline.from_pretrained(model_dir, dtype=torch_dtype(cfg.dtype), local_files_only=True)
        configs = {name: getattr(base, name).config for name in SUBMODULES}
        if cfg.img_height is None:  # record the model's default size, so the artifact states its shapes
            height, width = image_size(cfg, configs["transformer"], base.vae_scale_factor)
            cfg = cfg.with_overrides(img_height=height, img_width=width)
        artifacts = {name: compile_submodule(name, getattr(base, name), cfg, configs) for name in SUBMODULES}
        extras = {name: getattr(base, name) for name in (*TOKENIZERS, "scheduler")}
        return cls._assemble(cfg, devices, artifacts, extras, str(model_dir))

    @classmethod
    def _load(cls, directory: Path, rbln_config: dict | None):
        cfg_file = directory / RBLN_CONFIG_FILE
        if not cfg_file.is_file():
            raise ValueError(
                f"{directory} is not a compiled RBLN pipeline (no {RBLN_CONFIG_FILE}); "
                "compile it with from_pretrained(path, export=True)"
            )
        saved = json.loads(cfg_file.read_text())
        cfg = RBLNConfig.from_dict(saved["rbln_config"])
        if rbln_config is not None:
            cfg = _runtime_overrides(cfg, rbln_config)
        devices = torch_devices(cfg)
        artifacts = {name: load_compiled(directory / name) for name in SUBMODULES}
        with quiet_loading():
            extras = {name: AutoTokenizer.from_pretrained(directory / name) for name in TOKENIZERS}
            from diffusers import FlowMatchEulerDiscreteScheduler

            extras["scheduler"] = FlowMatchEulerDiscreteScheduler.from_pretrained(directory / "scheduler")
        return cls._assemble(cfg, devices, artifacts, extras, saved.get("model", str(directory)))

    @classmethod
    def _assemble(cls, cfg: RBLNConfig, devices: list[torch.device], artifacts: dict[str, CompiledArtifact],
                  extras: dict, model: str):
        usage = {name: (a.partition.weight_bytes, a.partition.peak_live_bytes) for name, a in artifacts.items()}
        plan = memory_plan(cfg, usage)
        plan.check()  # before anything runs on a device
        modules = {}
        for name, artifact in artifacts.items():
            logical = cfg.submodules[name].device
            compiled = CompiledSubmodule(artifact.partition, artifact.specs, logical, devices[logical])
            modules[name] = SUBMODULE_KINDS[name].runtime_class(compiled, artifact.config, torch_dtype(cfg.dtype))
        pipe = cls(**modules, **extras)
        pipe.rbln_config = cfg
        pipe.memory_plan = plan
        pipe._rbln_model = model
        pipe._rbln_artifacts = artifacts
        pipe._rbln_devices = devices
        pipe._rank_link = None
        pipe._pipeline_info = pipe._describe()
        pipe._install_host_timers()
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write the compiled artifact: graphs with weights, command plans, configs, tokenizers, scheduler."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in SUBMODULES:
            save_compiled(out / name, self._rbln_artifacts[name])
        for name in TOKENIZERS:
            getattr(self, name).save_pretrained(out / name)
        self.scheduler.save_pretrained(out / "scheduler")
        record = {"rbln_config": self.rbln_config.to_dict(), "model": self._rbln_model}
        (out / RBLN_CONFIG_FILE).write_text(json.dumps(record, indent=2))

    # ------------------------------------------------------------------ profiling

    def pipeline_info(self) -> PipelineInfo:
        """What a profiler is told about this pipeline (built once, when it was assembled)."""
        return self._pipeline_info

    def _describe(self, rank: int = 0, world_size: int = 1, ranks: tuple[int, ...] | None = None) -> PipelineInfo:
        """What the profiler of rank `rank` is told: the devices `ranks` gives it (all, in one process)
        and the programs on them."""
        mine = [i for i in range(len(self._rbln_devices)) if ranks is None or ranks[i] == rank]
        names = [name for name in SUBMODULES if getattr(self, name).compiled.device in mine]
        return PipelineInfo(
            model=self._rbln_model,
            rbln_config=self.rbln_config.to_dict(),
            devices=tuple(DeviceInfo(i, str(self._rbln_devices[i]), self.rbln_config.capacity(i),
                                     profile_from_config(self.rbln_config, i, str(self._rbln_devices[i])))
                          for i in mine),
            programs=tuple(getattr(self, name).compiled.info for name in names),
            activation_bytes={s.submodule: s.activation_bytes for s in self.memory_plan.submodules if s.submodule in names},
            activate_profiler={name: self.rbln_config.submodules[name].activate_profiler for name in SUBMODULES},
            runtime=RuntimeProbe([getattr(self, name).compiled for name in names]),
            rank=rank,
            world_size=world_size,
        )

    def join_ranks(self, rank: int, world_size: int, ranks: tuple[int, ...], link) -> None:
        """This pipeline is rank `rank`'s part of a run split across processes (`pipeline.remote_calls.distribute`):
        its profiler is told only this rank's devices and programs; on rank 0, `link` brackets each call
        on the other ranks."""
        self._rank_link = link
        self._pipeline_info = self._describe(rank, world_size, ranks)

    def _install_host_timers(self) -> None:
        """Time the host work inside diffusers' own __call__ at its seams: wrapped once, here, and
        reporting only inside a profiled call that records host work now (`host_recording_call()`);
        outside one a seam costs one lookup.
        A tokenizer or scheduler assigned later (`pipe.scheduler = ...from_config(...)`) is wrapped
        when assigned (`__setattr__`)."""
        for name in (*TOKENIZERS, "scheduler"):
            self._time_component(name)
        self.image_processor.postprocess = _timed(self.image_processor.postprocess, "postprocess")
        self._host_timers = True

    def _time_component(self, name: str) -> None:
        value = self.__dict__.get(name)
        if name in TOKENIZERS and value is not None and not isinstance(value, _TimedTokenizer):
            self.__dict__[name] = _TimedTokenizer(value, name)  # not through diffusers' config bookkeeping
        elif name == "scheduler" and value is not None and not getattr(value.step, "_rbln_timed", False):
            value.step = _timed(value.step, "scheduler_step", before=self._guidance_combine)

    def __setattr__(self, name, value):
        super().__setattr__(name, value)
        if name in (*TOKENIZERS, "scheduler") and self.__dict__.get("_host_timers"):
            self._time_component(name)

    def _guidance_combine(self, call: ActiveCall, start_ns: int) -> None:
        """diffusers combines the CFG halves between the transformer call and the scheduler step."""
        transformer_end = call.take_finished("transformer")
        if self.do_classifier_free_guidance and transformer_end is not None:
            call.sink.host("guidance_combine", transformer_end, start_ns)

    def prepare_latents(self, *args, **kwargs):
        call = host_recording_call()
        if call is None:
            return super().prepare_latents(*args, **kwargs)
        start = time.monotonic_ns()
        latents = super().prepare_latents(*args, **kwargs)
        call.sink.host("prepare_latents", start, time.monotonic_ns())
        return latents

    def __call__(self, *args, **kwargs):
        self._check_guidance(_requested_guidance_scale(args, kwargs))  # before anything runs or is recorded
        slowdown.current()  # a bad RBLN_PIPELINE_SLOWDOWN fails here too
        with profiled_call(self._pipeline_info, STEP_SUBMODULE):
            if self._rank_link is None:
                return super().__call__(*args, **kwargs)
            with self._rank_link.pipeline_call():
                return super().__call__(*args, **kwargs)

    def _check_guidance(self, guidance_scale) -> None:
        """diffusers guides (doubling the transformer's batch) exactly when guidance_scale > 1, and the
        transformer's batch was fixed when it was compiled: a call that does not match it fails here,
        as optimum-rbln's does, rather than after the text encoders ran."""
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
            return  # not a number: diffusers' own checks name it
        compiled = self.rbln_config
        if (guidance_scale > 1) == compiled.do_classifier_free_guidance:
            return
        batch = self.transformer.compiled.specs[0].shape[0]
        if compiled.do_classifier_free_guidance:
            raise ConfigError(
                f"guidance_scale={guidance_scale!r} does not fit the compiled transformer: it was compiled with "
                f"guidance_scale={compiled.guidance_scale!r}, for classifier-free guidance (batch {batch}), which "
                "diffusers runs only when guidance_scale > 1; call with guidance_scale > 1, or compile with "
                "rbln_config['guidance_scale'] <= 1"
            )
        raise ConfigError(
            f"guidance_scale={guidance_scale!r} asks for classifier-free guidance (guidance_scale > 1 doubles the "
            f"transformer batch), but the transformer was compiled with guidance_scale={compiled.guidance_scale!r}, "
            f"without it (batch {batch}); call with guidance_scale <= 1, or compile with "
            "rbln_config['guidance_scale'] > 1"
        )


_CALL_SIGNATURE = inspect.signature(StableDiffusion3Pipeline.__call__)


def _requested_guidance_scale(args: tuple, kwargs: dict):
    """The guidance_scale a pipeline call asks for, positional, keyword or diffusers' default;
    None when the arguments do not bind (diffusers then names the bad one itself)."""
    try:
        bound = _CALL_SIGNATURE.bind(None, *args, **kwargs)
    except TypeError:
        return None
    return bound.arguments.get("guidance_scale", _CALL_SIGNATURE.parameters["guidance_scale"].default)


def _timed(fn, label: str, detail: str = "", before=None):
    """`fn`, reported to the active call's sink as host work named `label`."""

    def timed(*args, **kwargs):
        call = host_recording_call()
        if call is None:
            return fn(*args, **kwargs)
        start = time.monotonic_ns()
        if before is not None:
            before(call, start)
        out = fn(*args, **kwargs)
        call.sink.host(label, start, time.monotonic_ns(), detail)
        return out

    timed._rbln_timed = True
    return timed


class _TimedTokenizer:
    """A tokenizer whose calls are timed as `tokenize`; every other attribute is the tokenizer's own,
    and it passes `isinstance` checks for the tokenizer's class."""

    def __init__(self, tokenizer, name: str):
        self._target = tokenizer
        self._call = _timed(tokenizer.__call__, "tokenize", name)

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_target", "_call"):  # copy/pickle probe before __init__
            raise AttributeError(name)
        return getattr(self._target, name)

    @property
    def __class__(self):
        return type(self._target)

    def __reduce__(self):  # pickles (and deep-copies) as the tokenizer itself
        return (_identity, (self._target,))


def _identity(value):
    return value


def _runtime_overrides(cfg: RBLNConfig, rbln_config: dict) -> RBLNConfig:
    """At load time only placement and profiling may change; compile-time keys must match the artifact."""
    if not isinstance(rbln_config, dict):
        raise ConfigError(f"rbln_config must be a dict, got {type(rbln_config).__name__}: {rbln_config!r}")
    merged = cfg.to_dict()
    for key, value in rbln_config.items():
        if key in SUBMODULES and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    new = RBLNConfig.from_dict(merged)
    for key in COMPILE_TIME_KEYS:
        if key in rbln_config and getattr(new, key) != getattr(cfg, key):
            raise ConfigError(
                f"rbln_config[{key!r}]={rbln_config[key]!r} differs from the compiled value {getattr(cfg, key)!r}; "
                f"compile-time keys ({', '.join(COMPILE_TIME_KEYS)}) cannot change at load: compile again "
                "with export=True"
            )
    return new

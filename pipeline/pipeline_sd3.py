"""`RBLNStableDiffusion3Pipeline`: diffusers' SD3 pipeline over device-split compiled submodules.

The denoising loop, guidance and scheduler are diffusers' own (`StableDiffusion3Pipeline.__call__`
runs unchanged); only the five submodules are replaced by runtime modules that run compiled
command programs on their logical devices. Usage mirrors optimum-rbln:

    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(model_dir, export=True, rbln_config={...})
    pipe.save_pretrained("sd3-compiled")
    pipe = RBLNStableDiffusion3Pipeline.from_pretrained("sd3-compiled", export=False)
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusion3Pipeline
from diffusers.configuration_utils import FrozenDict
from transformers import AutoTokenizer, CLIPTextConfig, T5Config

from .compiler import DTYPES, compile_submodule, load_compiled, save_compiled
from .config import SUBMODULES, ConfigError, RBLNConfig
from .events import DeviceInfo, PipelineInfo, Sink
from .graph_capture import image_size
from .library_logging import quiet_loading
from .placement import memory_plan, torch_devices
from .runtime import RUNTIME_CLASSES, CompiledSubmodule

RBLN_CONFIG_FILE = "rbln_config.json"
TOKENIZERS = ("tokenizer", "tokenizer_2", "tokenizer_3")
# Keys fixed when the graph is traced; a compiled artifact cannot change them.
COMPILE_TIME_KEYS = ("img_height", "img_width", "batch_size", "guidance_scale", "max_seq_len", "command_budget", "dtype")


def _model_config(name: str, config_dict: dict):
    if name in ("text_encoder", "text_encoder_2"):
        return CLIPTextConfig.from_dict(config_dict)
    if name == "text_encoder_3":
        return T5Config.from_dict(config_dict)
    return FrozenDict(config_dict)


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
        with quiet_loading():
            base = StableDiffusion3Pipeline.from_pretrained(model_dir, dtype=DTYPES[cfg.dtype], local_files_only=True)
        configs = {name: getattr(base, name).config for name in SUBMODULES}
        if cfg.img_height is None:  # record the model's default size, so the artifact states its shapes
            height, width = image_size(cfg, configs["transformer"], base.vae_scale_factor)
            cfg = cfg.with_overrides(img_height=height, img_width=width)
        compiled = {name: compile_submodule(name, getattr(base, name), cfg, configs) for name in SUBMODULES}
        parts = {name: (ep, part, specs, configs[name]) for name, (ep, part, specs) in compiled.items()}
        extras = {name: getattr(base, name) for name in (*TOKENIZERS, "scheduler")}
        return cls._assemble(cfg, devices, parts, extras, str(model_dir))

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
        parts = {}
        for name in SUBMODULES:
            ep, part, specs, config_dict = load_compiled(directory / name)
            parts[name] = (ep, part, specs, _model_config(name, config_dict))
        with quiet_loading():
            extras = {name: AutoTokenizer.from_pretrained(directory / name) for name in TOKENIZERS}
            from diffusers import FlowMatchEulerDiscreteScheduler

            extras["scheduler"] = FlowMatchEulerDiscreteScheduler.from_pretrained(directory / "scheduler")
        return cls._assemble(cfg, devices, parts, extras, saved.get("model", str(directory)))

    @classmethod
    def _assemble(cls, cfg: RBLNConfig, devices: list[torch.device], parts: dict, extras: dict, model: str):
        usage = {name: (part.weight_bytes, part.peak_live_bytes) for name, (_, part, _, _) in parts.items()}
        plan = memory_plan(cfg, usage)
        plan.check()  # before anything runs on a device
        modules = {}
        for name, (ep, part, specs, config) in parts.items():
            logical = cfg.submodules[name].device
            compiled = CompiledSubmodule(part, specs, logical, devices[logical])
            modules[name] = RUNTIME_CLASSES[name](compiled, config, DTYPES[cfg.dtype])
        pipe = cls(**modules, **extras)
        pipe.rbln_config = cfg
        pipe.memory_plan = plan
        pipe._rbln_model = model
        pipe._rbln_exported = {name: ep for name, (ep, _, _, _) in parts.items()}
        pipe._rbln_devices = devices
        pipe._host_sink = None
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write the compiled artifact: graphs with weights, command plans, configs, tokenizers, scheduler."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in SUBMODULES:
            module = getattr(self, name)
            part = module.compiled.partition
            save_compiled(out / name, self._rbln_exported[name], part, module.compiled.specs, module.config)
        for name in TOKENIZERS:
            getattr(self, name).save_pretrained(out / name)
        self.scheduler.save_pretrained(out / "scheduler")
        record = {"rbln_config": self.rbln_config.to_dict(), "model": self._rbln_model}
        (out / RBLN_CONFIG_FILE).write_text(json.dumps(record, indent=2))

    # ------------------------------------------------------------------ profiling

    def pipeline_info(self) -> PipelineInfo:
        return PipelineInfo(
            model=self._rbln_model,
            rbln_config=self.rbln_config.to_dict(),
            devices=tuple(DeviceInfo(i, str(d), self.rbln_config.capacity(i)) for i, d in enumerate(self._rbln_devices)),
            programs=tuple(getattr(self, name).compiled.info for name in SUBMODULES),
            activation_bytes={s.submodule: s.activation_bytes for s in self.memory_plan.submodules},
            activate_profiler={name: self.rbln_config.submodules[name].activate_profiler for name in SUBMODULES},
        )

    def _host(self, name: str, start_ns: int, detail: str = "") -> None:
        sink = self._host_sink
        if sink is not None:
            sink.host(name, start_ns, time.monotonic_ns(), detail)

    def prepare_latents(self, *args, **kwargs):
        start = time.monotonic_ns()
        latents = super().prepare_latents(*args, **kwargs)
        self._host("prepare_latents", start)
        return latents

    @contextmanager
    def _host_hooks(self, sink: Sink):
        """Time the host work inside diffusers' own __call__ at its seams, for this call only."""
        self._host_sink = sink
        saved = {name: self.__dict__[name] for name in TOKENIZERS}
        scheduler, image_processor = self.scheduler, self.image_processor
        transformer = self.transformer

        def timed_tokenizer(name, tokenizer):
            def call(*args, **kwargs):
                start = time.monotonic_ns()
                out = tokenizer(*args, **kwargs)
                self._host("tokenize", start, name)
                return out

            return _Delegate(tokenizer, call)

        step = scheduler.step

        def timed_step(*args, **kwargs):
            start = time.monotonic_ns()
            # diffusers combines the CFG halves between the transformer call and the scheduler step.
            if self.do_classifier_free_guidance and transformer.last_call_end_ns is not None:
                sink.host("guidance_combine", transformer.last_call_end_ns, start)
                transformer.last_call_end_ns = None
            out = step(*args, **kwargs)
            self._host("scheduler_step", start)
            return out

        postprocess = image_processor.postprocess

        def timed_postprocess(*args, **kwargs):
            start = time.monotonic_ns()
            out = postprocess(*args, **kwargs)
            self._host("postprocess", start)
            return out

        for name in TOKENIZERS:
            self.__dict__[name] = timed_tokenizer(name, saved[name])
        scheduler.step = timed_step
        image_processor.postprocess = timed_postprocess
        try:
            yield
        finally:
            self.__dict__.update(saved)
            del scheduler.step
            del image_processor.postprocess
            transformer.last_call_end_ns = None
            self._host_sink = None

    def __call__(self, *args, **kwargs):
        from rbln_perfetto.activation import begin_pipeline_call

        call = begin_pipeline_call(self.pipeline_info())
        if call is None:
            return super().__call__(*args, **kwargs)
        profiled = [getattr(self, name) for name in call.profiled]
        for name in call.profiled:
            module = getattr(self, name)
            module.sink, module.program_id = call.sink, call.program_ids[name]
        error: BaseException | None = None
        try:
            with self._host_hooks(call.sink):
                return super().__call__(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            for module in profiled:
                module.sink = None
            call.end(error)


class _Delegate:
    """A tokenizer whose calls are timed; every other attribute is the tokenizer's own."""

    def __init__(self, target, call):
        self._target = target
        self._call = call

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._target, name)


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

"""The device-split SD3 pipeline against diffusers' own StableDiffusion3Pipeline."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run
from diffusers import StableDiffusion3Pipeline

from pipeline import RBLNStableDiffusion3Pipeline, build_tiny_sd3, install_profiler
from pipeline.library_logging import quiet_loading

SPLIT_HEAVY = {"command_budget": "16KiB"}  # small enough that every submodule has split commands


@pytest.fixture(scope="module")
def reference_images(tiny_model):
    with quiet_loading():
        ref = StableDiffusion3Pipeline.from_pretrained(tiny_model)
    ref.set_progress_bar_config(disable=True)
    return {g: run(ref, steps=2, guidance=g) for g in (7.0, 1.0)}


@pytest.mark.parametrize(
    "placement",
    [
        {},
        {"text_encoder_3": {"device": 1}},
        {"text_encoder": {"device": 1}, "text_encoder_3": {"device": 2}, "vae": {"device": 1}},
    ],
    ids=["all-on-0", "t5-on-1", "three-devices"],
)
def test_image_equals_diffusers_with_splits(make_pipe, reference_images, placement):
    pipe = make_pipe({**placement, **SPLIT_HEAVY})
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"):
        commands = getattr(pipe, name).compiled.info.commands
        assert any(c.command_count > 1 for c in commands), f"{name} has no split command"
        assert getattr(pipe, name).rbln_device == {**{"device": 0}, **placement.get(name, {})}["device"]
    image = run(pipe, steps=2, guidance=7.0)
    assert np.abs(image - reference_images[7.0]).max() <= 1e-4


def test_image_equals_diffusers_without_guidance(make_pipe, reference_images):
    pipe = make_pipe({"guidance_scale": 1.0, "text_encoder_3": {"device": 1}})
    assert pipe.transformer.compiled.specs[0].shape[0] == 1  # no doubled CFG batch
    assert np.abs(run(pipe, steps=2, guidance=1.0) - reference_images[1.0]).max() <= 1e-4


class RecordingSink:
    """A real Sink: remembers which program each invocation ran."""

    def __init__(self, info):
        self.layouts = {p.submodule: p.tick_layout for p in info.programs}
        self.profiled = frozenset(self.layouts)
        self.calls, self.host_events, self.ended = [], [], []

    def invocation(self, submodule, ticks):
        assert len(ticks) == self.layouts[submodule].num_ticks and ticks == sorted(ticks)
        self.calls.append(submodule)

    def host(self, name, start_ns, end_ns, detail=""):
        self.host_events.append(name)

    def end(self, error):
        self.ended.append(error)


class RecordingProfiler:
    def __init__(self):
        self.sinks = []

    def begin_call(self, info):
        self.sinks.append(RecordingSink(info))
        return self.sinks[-1]


@pytest.fixture
def recording_profiler():
    profiler = RecordingProfiler()
    previous = install_profiler(profiler)
    yield profiler
    install_profiler(previous)


@pytest.mark.parametrize("guidance,steps", [(7.0, 2), (7.0, 3), (1.0, 2)])
def test_invocation_counts_seen_by_the_runtime(make_pipe, recording_profiler, guidance, steps):
    pipe = make_pipe({"guidance_scale": guidance})
    run(pipe, steps=steps, guidance=guidance)
    (sink,) = recording_profiler.sinks
    assert sink.ended == [None]
    encodes = 2 if guidance > 1 else 1
    expected = ["text_encoder", "text_encoder_2", "text_encoder_3"] * encodes + ["transformer"] * steps + ["vae"]
    assert sink.calls == expected


def test_save_load_round_trip_does_not_recompile(make_pipe, compiled_dirs, monkeypatch, tmp_path):
    first = make_pipe({"text_encoder_3": {"device": 1}})
    image = run(first)

    def no_trace(*args, **kwargs):
        raise AssertionError("loading a compiled pipeline traced the model again")

    monkeypatch.setattr(torch.export, "export", no_trace)
    second = make_pipe({"text_encoder_3": {"device": 1}})
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae"):
        assert getattr(second, name).compiled.info == getattr(first, name).compiled.info
    assert np.array_equal(run(second), image)
    # Saving the loaded pipeline again gives an artifact that loads to the same programs.
    second.save_pretrained(tmp_path / "again")
    third = RBLNStableDiffusion3Pipeline.from_pretrained(tmp_path / "again")
    assert third.transformer.compiled.info == first.transformer.compiled.info


def test_load_may_move_submodules_but_not_change_shapes(make_pipe, compiled_dirs):
    moved = make_pipe({}, text_encoder_3={"device": 1}, devices=["cpu", "cpu"])
    assert moved.text_encoder_3.rbln_device == 1
    with pytest.raises(ValueError, match=r"rbln_config\['img_height'\]=128 differs from the compiled value 64"):
        RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs({}), rbln_config={"img_height": 128, "img_width": 128})


def test_call_with_other_shapes_names_the_compiled_ones(make_pipe):
    pipe = make_pipe({})
    with pytest.raises(ValueError, match=r"text_encoder_3 was compiled for input_ids of shape \[1, 256\].*img_height"):
        run(pipe, max_sequence_length=128)
    with pytest.raises(ValueError, match=r"transformer was compiled for hidden_states of shape \[2, 16, 32, 32\]"):
        run(pipe, height=32, width=32)


def test_not_compiled_and_missing_directories_are_clear_errors(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="is not a compiled RBLN pipeline"):
        RBLNStableDiffusion3Pipeline.from_pretrained(tiny_model, export=False)
    with pytest.raises(ValueError, match="not a local directory"):
        RBLNStableDiffusion3Pipeline.from_pretrained("stabilityai/stable-diffusion-3-medium-diffusers", export=True)


def _tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_embedded_model_is_deterministic_and_loads_in_diffusers(tiny_model, tmp_path):
    again = build_tiny_sd3(tmp_path / "again")
    assert _tree_digest(Path(again)) == _tree_digest(Path(tiny_model))
    with quiet_loading():
        pipe = StableDiffusion3Pipeline.from_pretrained(again)
    tokens = pipe.tokenizer("a photo of a cat").input_ids
    assert tokens[0] == pipe.tokenizer.bos_token_id and tokens[-1] == pipe.tokenizer.eos_token_id
    assert pipe.text_encoder.config.eos_token_id == pipe.tokenizer.eos_token_id
    assert pipe.tokenizer_3("a photo of a cat").input_ids[-1] == pipe.tokenizer_3.eos_token_id
    other_seed = build_tiny_sd3(tmp_path / "seed1", seed=1)
    assert _tree_digest(Path(other_seed)) != _tree_digest(Path(tiny_model))


@pytest.mark.slow
def test_medium_scale_keeps_sd3_medium_depth(tmp_path):
    path = build_tiny_sd3(tmp_path / "medium", scale="medium")
    with quiet_loading():
        pipe = StableDiffusion3Pipeline.from_pretrained(path)
    assert len(pipe.transformer.transformer_blocks) == 24
    assert pipe.text_encoder.config.num_hidden_layers == 12
    assert pipe.text_encoder_2.config.num_hidden_layers == 32
    assert pipe.text_encoder_3.config.num_layers == 24
    assert len(pipe.vae.decoder.up_blocks) == 4
    assert pipe.vae_scale_factor == 8


def test_build_tiny_sd3_rejects_unknown_scale(tmp_path):
    with pytest.raises(ValueError, match=r"scale='huge'.*valid choices: \['medium', 'tiny'\]"):
        build_tiny_sd3(tmp_path / "x", scale="huge")

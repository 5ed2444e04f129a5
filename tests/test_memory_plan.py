"""The device memory plan, on real SD3-medium shapes without weights, and at compile time: an
overflow is refused before anything is compiled with weights, with advice that makes it fit."""

import re

import pytest
import torch

from pipeline import SUBMODULES, DeviceMemoryError, RBLNConfig, RBLNStableDiffusion3Pipeline, plan_memory
from pipeline.placement import memory_plan

GIB = 2**30


@pytest.mark.slow
def test_sd3_medium_fp16_overflows_one_atom_and_fits_with_t5_on_device_1():
    plan = plan_memory("sd3-medium", {"dtype": "float16"})
    assert not plan.fits and plan.overflowing == [0]
    weights = {s.submodule: s.weight_bytes for s in plan.submodules}
    # Real parameter counts: T5-XXL encoder 4.76 B, MMDiT 2.03 B, CLIP-G 0.69 B, CLIP-L 0.12 B at 2 bytes each.
    assert 8.85 * GIB < weights["text_encoder_3"] < 8.9 * GIB  # once: no folded constant counted twice
    assert 3.7 * GIB < weights["transformer"] < 3.9 * GIB
    with pytest.raises(DeviceMemoryError) as err:
        plan.check()
    message = str(err.value)
    for part in ("device 0", "of 16.00 GiB", "text_encoder_3 8.9", "transformer 4.0", "exceeds its capacity",
                 "To fit: set rbln_config['text_encoder_3']['device'] = 1 (new logical device 1)"):
        assert part in message

    split = plan_memory("sd3-medium", {"dtype": "float16", "text_encoder_3": {"device": 1}})
    assert split.fits
    split.check()
    assert split.used(1) == sum(s.total_bytes for s in split.submodules if s.submodule == "text_encoder_3")


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="valid names: sd3-medium"):
        plan_memory("sd4-giant")


def test_compile_refuses_a_placement_that_does_not_fit_before_compiling_with_weights(tiny_model, monkeypatch):
    traced_on = []
    real_export = torch.export.export

    def recording_export(module, args, *more, **kwargs):
        traced_on.append(next(module.parameters()).device.type)
        return real_export(module, args, *more, **kwargs)

    monkeypatch.setattr(torch.export, "export", recording_export)
    with pytest.raises(DeviceMemoryError, match=r"device 1: .* of 64.0 KiB: text_encoder_3"):
        RBLNStableDiffusion3Pipeline.from_pretrained(
            tiny_model, export=True,
            rbln_config={"text_encoder_3": {"device": 1}, "device_memory": ["16GiB", "64KiB"]},
        )
    assert set(traced_on) <= {"meta"}, f"compiled with weights before refusing the plan: {traced_on}"


def test_the_plan_made_before_compiling_is_the_compiled_programs_plan(tiny_model, compiled_dirs):
    """The early plan (meta device, no weights) must equal the compiled pipeline's, or a placement
    that fits would be refused: with the capacity exactly what the compiled programs need, it compiles."""
    for rbln_config in ({}, {"command_budget": "16KiB"}):
        compiled = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(rbln_config)).memory_plan
        early = plan_memory(tiny_model, rbln_config)
        assert [(s.submodule, s.weight_bytes, s.activation_bytes) for s in early.submodules] == [
            (s.submodule, s.weight_bytes, s.activation_bytes) for s in compiled.submodules]
    exact = compiled.used(0)
    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs({"command_budget": "16KiB", "device_memory": exact}))
    assert pipe.memory_plan.fits and pipe.memory_plan.used(0) == pipe.memory_plan.capacities[0] == exact


@pytest.fixture(scope="module")
def tiny_usage(tiny_model):
    """submodule -> (weight bytes, peak activation bytes) of the tiny model's real programs (placement
    does not change them)."""
    plan = plan_memory(tiny_model)
    return {s.submodule: (s.weight_bytes, s.activation_bytes) for s in plan.submodules}


def plan_for(usage, rbln_config):
    return memory_plan(RBLNConfig.from_dict(rbln_config), usage)


def with_moves(rbln_config, moves, plan):
    """rbln_config with `moves` applied; a per-device capacity list gets one entry per logical device
    in use after them (a new device: the largest capacity), as the advice says."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in rbln_config.items()}
    for name, device in moves.items():
        out[name] = {**out.get(name, {}), "device": device}
    if isinstance(out.get("device_memory"), list):
        n = 1 + max(out.get(name, {}).get("device", 0) for name in SUBMODULES)
        out["device_memory"] = (list(plan.capacities) + [max(plan.capacities)] * n)[:n]
    return out


def with_raised_memory(rbln_config, message):
    """rbln_config with device_memory raised as the error message advises."""
    raises = re.findall(r"rbln_config\['device_memory'\](?:\[(\d+)\])? to at least (\d+\.\d+ [KMG]iB)", message)
    assert raises, message
    out = dict(rbln_config)
    for device, size in raises:
        if device:
            out["device_memory"] = [*out["device_memory"]]
            out["device_memory"][int(device)] = size
        else:
            out["device_memory"] = size
    return out


def total(usage, *names):
    return sum(sum(usage[n]) for n in names)


CASES = {
    # The user already put T5 on device 1, and device 1 is the one too small: the old advice was
    # "rbln_config['text_encoder_3']['device'] = 1", the placement they have.
    "t5-already-on-1": (lambda u: {"text_encoder_3": {"device": 1}, "device_memory": ["16GiB", "64KiB"]},
                        {"text_encoder_3": 0}),
    # Device 0 is short by one byte and there is no other device: one move, to a new device.
    "one-device-short": (lambda u: {"device_memory": total(u, *SUBMODULES) - 1}, None),
    # T5 must leave device 1; device 0 is full, device 2 has room: an existing device beats a new one.
    "room-on-device-2": (lambda u: {"text_encoder_3": {"device": 1}, "vae": {"device": 2},
                                    "device_memory": [total(u, "text_encoder", "text_encoder_2", "transformer"),
                                                      total(u, "text_encoder_3") - 1,
                                                      total(u, "vae", "text_encoder_3")]},
                         {"text_encoder_3": 2}),
    # The largest submodule alone is larger than any device: only more memory helps.
    "nothing-fits": (lambda u: {"text_encoder_3": {"device": 1}, "device_memory": max(map(sum, u.values())) - 1},
                     "none"),
}


@pytest.mark.parametrize("case", CASES)
def test_advice_moves_submodules_away_from_where_they_are_and_makes_the_plan_fit(tiny_usage, case):
    make_config, expected_moves = CASES[case]
    rbln_config = make_config(tiny_usage)
    plan = plan_for(tiny_usage, rbln_config)
    with pytest.raises(DeviceMemoryError) as err:
        plan.check()
    message = str(err.value)
    placed = {s.submodule: s.device for s in plan.submodules}
    for name, device in placed.items():  # never the placement the user already has
        assert f"rbln_config[{name!r}]['device'] = {device}" not in message

    moves = plan.fitting_moves()
    if expected_moves == "none":
        largest = max(tiny_usage, key=lambda name: sum(tiny_usage[name]))
        assert moves is None and f"no placement fits these capacities ({largest} alone needs" in message
    else:
        assert moves and all(placed[name] != device for name, device in moves.items())
        if expected_moves is not None:
            assert moves == expected_moves
        for name, device in moves.items():
            assert f"rbln_config[{name!r}]['device'] = {device}" in message
        moved = with_moves(rbln_config, moves, plan)
        if isinstance(moved.get("device_memory"), list) and len(moved["device_memory"]) != len(plan.capacities):
            n = len(moved["device_memory"])
            assert f"then give rbln_config['device_memory'] {n} entr" in message
        assert plan_for(tiny_usage, moved).fits
    # The other advice, more memory for the placement as it is, is enough too.
    assert plan_for(tiny_usage, with_raised_memory(rbln_config, message)).fits

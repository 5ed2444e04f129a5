"""The device memory plan, on real SD3-medium shapes without weights, and at compile time."""

import pytest

from pipeline import DeviceMemoryError, RBLNStableDiffusion3Pipeline, plan_memory

GIB = 2**30


@pytest.mark.slow
def test_sd3_medium_fp16_overflows_one_atom_and_fits_with_t5_on_device_1():
    plan = plan_memory("sd3-medium", {"dtype": "float16"})
    assert not plan.fits and plan.overflowing == [0]
    weights = {s.submodule: s.weight_bytes for s in plan.submodules}
    # Real parameter counts: T5-XXL encoder 4.76 B, MMDiT 2.03 B, CLIP-G 0.69 B, CLIP-L 0.12 B at 2 bytes each.
    assert 9.0 * GIB < weights["text_encoder_3"] < 9.2 * GIB
    assert 3.7 * GIB < weights["transformer"] < 3.9 * GIB
    with pytest.raises(DeviceMemoryError) as err:
        plan.check()
    message = str(err.value)
    for part in ("device 0", "of 16.00 GiB", "text_encoder_3 9.1", "transformer 4.0", "exceeds its capacity"):
        assert part in message

    split = plan_memory("sd3-medium", {"dtype": "float16", "text_encoder_3": {"device": 1}})
    assert split.fits
    split.check()
    assert split.used(1) == sum(s.total_bytes for s in split.submodules if s.submodule == "text_encoder_3")


def test_unknown_config_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match="valid names: sd3-medium"):
        plan_memory("sd4-giant")


def test_compile_refuses_a_placement_that_does_not_fit(tiny_model):
    with pytest.raises(DeviceMemoryError, match=r"device 1: .* of 64.0 KiB: text_encoder_3"):
        RBLNStableDiffusion3Pipeline.from_pretrained(
            tiny_model, export=True,
            rbln_config={"text_encoder_3": {"device": 1}, "device_memory": ["16GiB", "64KiB"]},
        )

"""rbln_config validation: every error names the key, the value and what would be valid."""

import pytest

from pipeline import ConfigError, RBLNConfig, RBLNStableDiffusion3Pipeline
from pipeline.placement import torch_devices

BAD = [
    ({"text_encoder4": {}}, r"rbln_config key 'text_encoder4' is not valid; valid keys: text_encoder, text_encoder_2"),
    ({"vae": 3}, r"rbln_config\['vae'\]=3 must be a dict with keys device, activate_profiler"),
    ({"vae": {"devcie": 1}}, r"rbln_config\['vae'\] key 'devcie' is not valid; valid keys: device, activate_profiler"),
    ({"vae": {"device": -1}}, r"rbln_config\['vae'\]\['device'\]=-1 is out of range; valid: an int >= 0"),
    ({"vae": {"device": "1"}}, r"rbln_config\['vae'\]\['device'\]='1' must be an int >= 0, got str"),
    ({"vae": {"device": True}}, r"rbln_config\['vae'\]\['device'\]=True must be an int >= 0, got bool"),
    ({"vae": {"activate_profiler": "yes"}}, r"\['activate_profiler'\]='yes' is not valid; valid: True, False, None"),
    ({"vae": {"device": 2}, "devices": ["cpu", "cpu"]},
     r"rbln_config\['vae'\]\['device'\]=2 has no entry in rbln_config\['devices'\] \(\['cpu', 'cpu'\]\); valid devices: 0..1"),
    ({"devices": "cpu"}, r"rbln_config\['devices'\]='cpu' must be a non-empty list of torch device strings"),
    ({"devices": ["gpu0"]}, r"rbln_config\['devices'\]\[0\]='gpu0' is not a torch device; valid: 'cpu', 'cuda'"),
    ({"img_height": 64}, r"needs both 'img_height' and 'img_width'"),
    ({"img_height": 64.0, "img_width": 64}, r"rbln_config\['img_height'\]=64.0 must be an int >= 8, got float"),
    ({"batch_size": 0}, r"rbln_config\['batch_size'\]=0 is out of range; valid: an int >= 1"),
    ({"max_seq_len": 513}, r"rbln_config\['max_seq_len'\]=513 is out of range; valid: an int in 1..512"),
    ({"guidance_scale": "7"}, r"rbln_config\['guidance_scale'\]='7' must be a finite number"),
    ({"guidance_scale": float("nan")}, r"rbln_config\['guidance_scale'\]=nan must be a finite number"),
    ({"dtype": "fp16"}, r"rbln_config\['dtype'\]='fp16' is not valid; valid: float32, float16, bfloat16"),
    ({"command_budget": "twelve KiB"}, r"rbln_config\['command_budget'\]='twelve KiB' is not a size"),
    ({"command_budget": "3 TiB"}, r"has unknown unit 'tib'; valid units: B, KiB, MiB, GiB"),
    ({"command_budget": 0}, r"rbln_config\['command_budget'\]=0 must be a positive size"),
    ({"device_memory": [1, 2, 3]}, r"lists 3 capacities for 1 logical devices"),
    ([("vae", 1)], r"rbln_config must be a dict, got list"),
]


@pytest.mark.parametrize("bad,message", BAD, ids=[m[:40] for _, m in BAD])
def test_bad_config_is_a_clear_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        RBLNConfig.from_dict(bad)


def test_bad_config_fails_before_compiling(tiny_model, monkeypatch):
    import pipeline.pipeline_sd3 as mod

    monkeypatch.setattr(mod, "compile_submodule", lambda *a, **k: pytest.fail("compiled despite a bad config"))
    with pytest.raises(ConfigError, match="devcie"):
        RBLNStableDiffusion3Pipeline.from_pretrained(tiny_model, export=True, rbln_config={"vae": {"devcie": 1}})


def test_unavailable_cuda_device_is_named(monkeypatch):
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = RBLNConfig.from_dict({"devices": ["cpu", "cuda:1"], "vae": {"device": 1}})
    with pytest.raises(ConfigError, match=r"rbln_config\['devices'\]\[1\]='cuda:1' is not available: this machine has 0 CUDA"):
        torch_devices(cfg)


def test_defaults_and_round_trip():
    cfg = RBLNConfig.from_dict({"text_encoder_3": {"device": 1, "activate_profiler": True}, "command_budget": "2MiB",
                                "device_memory": "8 GiB"})
    assert cfg.submodules["vae"].device == 0 and cfg.submodules["text_encoder_3"].device == 1
    assert cfg.command_budget == 2 * 2**20 and cfg.capacity(1) == 8 * 2**30
    assert cfg.num_logical_devices == 2 and cfg.do_classifier_free_guidance
    assert RBLNConfig.from_dict(cfg.to_dict()) == cfg


def test_default_device_map_without_gpus(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = RBLNConfig.from_dict({"text_encoder_3": {"device": 1}})
    assert [str(d) for d in torch_devices(cfg)] == ["cpu", "cpu"]

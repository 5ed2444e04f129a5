"""Device profiles (`pipeline.device_profiles`): `rbln_config['device_profile']` checked with one-line
errors, the calibration measured once per machine and cached on disk, and a real profiled run whose
capture and trace say which profile each device used; the roofline of that run against numbers
computed from the capture itself (its programs' flops and bytes, its invocations' durations)."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from conftest import run

import rbln_perfetto
from pipeline import device_profiles
from pipeline.config import DEFAULT_DEVICE_MEMORY, ConfigError, RBLNConfig
from pipeline.contract import DeviceProfile, TickLayout
from rbln_perfetto.analysis.roofline import device_profiles as trace_profiles
from rbln_perfetto.analysis.roofline import roofline
from rbln_perfetto.query import open_trace
from rbln_perfetto.recorder.capture import iter_records, read_info

SPLIT = {"text_encoder_3": {"device": 1}}
TARGET = {"peak_flops": {"float32": 2.0e12, "float16": 8.0e12}, "mem_bandwidth": "100GB/s", "name": "target npu"}


@pytest.mark.parametrize("value,message", [
    ({"peak": 1}, r"rbln_config\['device_profile'\] key 'peak' is not valid; valid keys: peak_flops, mem_bandwidth, "
                  r"capacity, name \(one profile for all devices\) or logical devices 0\.\.1"),
    ({"peak_flops": 1e12, "mem_bw": 1}, r"rbln_config\['device_profile'\] key 'mem_bw' is not valid; valid keys: "
                                        r"peak_flops, mem_bandwidth, capacity, name$"),
    ({"peak_flops": 1e12}, r"has no 'mem_bandwidth'; a given profile needs peak_flops and mem_bandwidth"),
    ({"peak_flops": {"float16": 1e12}, "mem_bandwidth": 1e9},
     r"\['peak_flops'\] has no figure for the run's dtype 'float32'; given: float16"),
    ({"peak_flops": {"fp8": 1e12}, "mem_bandwidth": 1e9}, r"key 'fp8' is not a dtype; valid: float32, float16, bfloat16"),
    ({"peak_flops": -1, "mem_bandwidth": 1e9}, r"\['peak_flops'\]=-1 is not valid; valid: a positive finite number"),
    ({"peak_flops": True, "mem_bandwidth": 1e9}, r"\['peak_flops'\]=True is not valid"),
    ({"peak_flops": 1e12, "mem_bandwidth": "fast"}, r"\['mem_bandwidth'\]='fast' is not a bandwidth"),
    ({"peak_flops": 1e12, "mem_bandwidth": 1e9, "capacity": "lots"}, r"\['capacity'\]='lots' is not a size"),
    ({"peak_flops": 1e12, "mem_bandwidth": 1e9, "name": 3}, r"\['name'\]=3 is not valid; valid: a string"),
    ({2: {"peak_flops": 1e12, "mem_bandwidth": 1e9}}, r"key 2 is not valid; .* or logical devices 0\.\.1"),
    ([None], r"lists 1 profiles for 2 logical devices"),
    ("fast", r"rbln_config\['device_profile'\]='fast' is not valid; valid: a profile dict"),
    ({1: {"peak_flops": 1e12}}, r"rbln_config\['device_profile'\]\[1\] has no 'mem_bandwidth'"),
])
def test_bad_device_profiles_are_one_line_errors(value, message):
    with pytest.raises(ConfigError, match=message) as e:
        RBLNConfig.from_dict({**SPLIT, "device_profile": value})
    assert "\n" not in str(e.value)


def test_given_profiles_parse_per_device_and_round_trip():
    one = RBLNConfig.from_dict({**SPLIT, "device_profile": TARGET})
    assert one.device_profile[0] == one.device_profile[1]
    assert one.device_profile[0] == {"peak_flops": 2.0e12, "mem_bandwidth": 100e9, "capacity": None,
                                     "name": "target npu"}
    half = RBLNConfig.from_dict({**SPLIT, "dtype": "float16", "device_profile": {"1": {**TARGET, "capacity": "8GiB"}}})
    assert half.device_profile[0] is None and half.device_profile[1]["peak_flops"] == 8.0e12
    assert half.device_profile[1]["capacity"] == 8 * 2**30
    listed = RBLNConfig.from_dict({**SPLIT, "device_profile": [None, TARGET]})
    assert listed.device_profile == (None, one.device_profile[1])
    for cfg in (one, half, listed):
        assert RBLNConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # A given profile, and the capacity it takes from device_memory where it gives none.
    given = device_profiles.from_config(listed, 1, "cpu")()
    assert given == DeviceProfile(2.0e12, 100e9, DEFAULT_DEVICE_MEMORY, "float32", "given", "target npu")
    assert given.roofline_ns(2.0e12, 1) == pytest.approx(1e9)  # one second of compute
    assert given.roofline_ns(1, 100e9) == pytest.approx(1e9)  # one second of memory traffic
    assert given.ridge_intensity == pytest.approx(20.0)


def test_calibration_is_measured_once_and_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("RBLN_PERFETTO_CACHE", str(tmp_path))
    monkeypatch.setattr(device_profiles, "_memo", {})
    p = device_profiles.calibrate("cpu", "float32")
    assert p.source == "measured" and p.dtype == "float32"
    assert math.isfinite(p.peak_flops_per_s) and p.peak_flops_per_s > 0
    assert math.isfinite(p.mem_bandwidth_bytes_per_s) and p.mem_bandwidth_bytes_per_s > 0
    assert p.capacity_bytes > 0 and f"{torch.get_num_threads()} threads" in p.label
    cached = json.loads((tmp_path / device_profiles.CACHE_FILE).read_text())
    key = device_profiles.calibration_key("cpu", "float32")
    assert list(cached) == [key]
    assert json.loads(key)["threads"] == torch.get_num_threads() and json.loads(key)["torch"] == torch.__version__

    def no_measuring(*args):
        raise AssertionError("measured again")

    monkeypatch.setattr(device_profiles, "measure", no_measuring)
    monkeypatch.setattr(device_profiles, "_memo", {})  # a new process on this machine: from the disk cache
    assert device_profiles.calibrate("cpu", "float32") == p
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert device_profiles.calibration_key("cpu", "float32") != key  # another thread count: measured anew
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def profiled_run(compiled_dirs, tmp_path_factory):
    """One step of the split pipeline: device 0 measured, device 1 given the TARGET profile."""
    from pipeline import RBLNStableDiffusion3Pipeline

    pipe = RBLNStableDiffusion3Pipeline.from_pretrained(compiled_dirs(SPLIT), rbln_config={"device_profile": [None, TARGET]})
    pipe.set_progress_bar_config(disable=True)
    with rbln_perfetto.profile(tmp_path_factory.mktemp("device-profile-run")) as prof:
        run(pipe, steps=1)
    return prof


def test_the_capture_and_trace_say_which_profile_each_device_used(profiled_run):
    info = read_info(profiled_run.capture_file)
    measured, given = (d.profile for d in info.pipelines[0].devices)
    # The measured one is the calibration cached for this machine (at the run's thread count).
    cache = json.loads((Path(os.environ["RBLN_PERFETTO_CACHE"]) / device_profiles.CACHE_FILE).read_text())
    entries = [json.loads(k) | v for k, v in cache.items()]
    assert {"source": "measured", "peak_flops_per_s": measured.peak_flops_per_s, "label": measured.label,
            "mem_bandwidth_bytes_per_s": measured.mem_bandwidth_bytes_per_s, "dtype": "float32", "device": "cpu",
            "threads": info.pipelines[0].runtime.intra_op_threads} in [
        {k: e[k] for k in ("source", "peak_flops_per_s", "label", "mem_bandwidth_bytes_per_s", "dtype", "device",
                           "threads")} for e in entries]
    assert f"{info.pipelines[0].runtime.intra_op_threads} threads" in measured.label
    assert (given.source, given.peak_flops_per_s, given.mem_bandwidth_bytes_per_s, given.capacity_bytes,
            given.label) == ("given", 2.0e12, 100e9, DEFAULT_DEVICE_MEMORY, "target npu")
    for path in (profiled_run.aggregate_file, profiled_run.invocation_files[0]):
        with open_trace(path, backend="sqlite") as tr:
            table = trace_profiles(tr)
            args = dict(tr.query("SELECT a.key, coalesce(a.string_value, a.real_value, a.int_value) AS v FROM slice s "
                                 "JOIN args a USING (arg_set_id) WHERE s.name GLOB 'run *'").values.tolist())
        assert list(table.source) == ["measured", "given"]
        assert args["debug.device_1_source"] == "given" and args["debug.device_1_label"] == "target npu"
        assert float(args["debug.device_0_peak_flops_per_s"]) == measured.peak_flops_per_s


def test_the_roofline_of_a_real_run_matches_its_capture(profiled_run):
    """Per submodule: time, flops, bytes, roofline time and time above the roof, from the capture's
    programs (each command's flops and bytes) and invocations (each command's duration)."""
    info = read_info(profiled_run.capture_file)
    profile = {d.logical: d.profile for d in info.pipelines[0].devices}
    want = defaultdict(lambda: defaultdict(float))
    for _, record in iter_records(profiled_run.capture_file):
        if record.WhichOneof("kind") != "invocation":
            continue
        program = info.programs[record.invocation.program_id]
        layout = TickLayout.of(program)
        p = profile[program.device]
        g = want[program.submodule]
        for c, cmd in enumerate(program.commands):
            dur = record.invocation.durations_ns[layout.command(c)]
            roof = 1e9 * max(cmd.flops / p.peak_flops_per_s, cmd.bytes / p.mem_bandwidth_bytes_per_s)
            g["dur"] += dur
            g["flops"] += cmd.flops
            g["bytes"] += cmd.bytes
            g["roof"] += roof
            g["above"] += max(0.0, dur - roof)
            g["peak"] = p.peak_flops_per_s
    table = roofline(profiled_run.aggregate_file, by="submodule")
    assert set(table.submodule) == set(want)
    for r in table.itertuples():
        g = want[r.submodule]
        assert r.flops == g["flops"] and r.bytes == g["bytes"]
        assert r.time_ms == pytest.approx(g["dur"] / 1e6)
        assert r.roofline_ms == pytest.approx(g["roof"] / 1e6)
        assert r.above_roof_ms == pytest.approx(g["above"] / 1e6)
        assert r.mfu_pct == pytest.approx(100 * g["flops"] / (g["dur"] / 1e9) / g["peak"])
        assert r.device == ("device 1" if r.submodule == "text_encoder_3" else "device 0")
    assert table.above_roof_ms.iloc[0] == pytest.approx(max(g["above"] for g in want.values()) / 1e6)

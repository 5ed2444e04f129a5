"""Provenance: what a run's numbers depend on, gathered into the capture and shown in every trace.

Gathered when the capture starts (`recorder.host_info`): the machine, its CPU model and core count, its load
average. The pipeline adds its own part when it first runs profiled (`capture.CaptureWriter.pipeline`):
how each device's durations are taken, torch's version and intra-op threads, the model directory,
a digest of the weights, the rbln_config as compiled. Everything a trace shows comes from the
capture, so exporting one capture twice gives the same bytes. In every trace file (`TraceProvenance`):

- a `system_info` packet, which trace_processor reads into its `metadata` table (system_name,
  system_release, system_version, system_machine, num_cpus, page_size, timezone_off_mins,
  tracing_service_version);
- a `trace_uuid` packet (`metadata.trace_uuid`), derived from the run's identity and the file's
  name: the same for every export of the file, different for every file;
- the `Run` track's one slice, `run <run id>`, spanning the file's events, with everything else
  as its args (`debug.clock`, `debug.timing`, `debug.torch_version`, `debug.cpu_model`, ...), each
  logical device's profile among them (`debug.device_{d}_source`, `debug.device_{d}_peak_flops_per_s`, ...).

A capture written before provenance existed exports without it (its fields are absent).
"""

from __future__ import annotations

import json

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt

from ..naming import DEVICE_PROFILE_FIELDS, TRACING_SERVICE, device_profile_arg, trace_uuid
from ..proto_bytes import FieldNumber, f_bytes
from .slice_packets import annotation, boottime_slice_packets
from .tracks import RUN_TRACK

CLOCK = ("CLOCK_MONOTONIC ns of the profiled process, placed on CLOCK_BOOTTIME (the trace clock) by the "
         "offset between the two read at the capture's start")
# The rbln_config keys that fix a compiled program's shapes and commands, shown as args of their own.
COMPILED_KEYS = ("img_height", "img_width", "batch_size", "guidance_scale", "max_seq_len", "command_budget", "dtype")


def _timing(info) -> str:
    """How durations were taken, per device; one phrase when every device took them the same way."""
    timings: dict[int, tuple[str, str]] = {}
    for pipe in info.pipelines:
        for d in pipe.devices:
            if d.timing:
                timings.setdefault(d.logical, (d.torch_device, d.timing))
    if len({t for _, t in timings.values()}) == 1:
        return next(iter(timings.values()))[1]
    return "; ".join(f"device {d} ({torch_device}): {t}" for d, (torch_device, t) in sorted(timings.items()))


def _profile_args(info) -> list[tuple[str, str | int | float]]:
    """Each logical device's profile, the first pipeline's that gives one (as `_timing` takes devices)."""
    profiles: dict[int, object] = {}
    for pipe in info.pipelines:
        for d in pipe.devices:
            if d.HasField("profile"):
                profiles.setdefault(d.logical, d.profile)
    return [(device_profile_arg(d, name), getattr(p, name)) for d, p in sorted(profiles.items())
            for name in DEVICE_PROFILE_FIELDS]


def run_args(info) -> list[tuple[str, str | int | float]]:
    """The Run slice's args, in order, from a capture's `CaptureInfo`; what the capture lacks is left out."""
    h = info.header
    args: list[tuple[str, str | int | float]] = [("run_id", h.run_id), ("status", info.status)]
    if h.tool_version:
        args.append(("tool_version", h.tool_version))
    args += [("hostname", h.hostname), ("pid", h.pid), ("clock", CLOCK)]
    timing = _timing(info)
    if timing:
        args.append(("timing", timing))
    if h.HasField("host"):
        host = h.host
        args += [("os", f"{host.sysname} {host.release} {host.machine}"), ("cpu_model", host.cpu_model),
                 ("cpu_count", host.cpu_count), ("usable_cpus", host.usable_cpus)]
        args += [(f"load_average_{m}m", round(v, 2)) for m, v in zip((1, 5, 15), host.load_average)]
        args.append(("python_version", host.python_version))
    args += _profile_args(info)
    for k, pipe in enumerate(info.pipelines):
        suffix = f"_{k}" if k else ""  # a capture of several pipelines numbers the later ones' args
        args.append((f"model_dir{suffix}", pipe.model))
        if pipe.HasField("runtime"):
            r = pipe.runtime
            args += [(f"torch_version{suffix}", r.torch_version), (f"intra_op_threads{suffix}", r.intra_op_threads),
                     (f"weights_digest{suffix}", r.weights_digest)]
            if r.slowdown:  # the test-only knob (pipeline.slowdown): this run is not a real one
                args.append((f"slowdown{suffix}", r.slowdown))
        config = json.loads(pipe.rbln_config_json or "{}")
        args += [(f"{key}{suffix}", config[key]) for key in COMPILED_KEYS if config.get(key) is not None]
        args.append((f"rbln_config{suffix}", pipe.rbln_config_json or "{}"))
    return args


def _framed(packet: pt.TracePacket) -> bytes:
    return f_bytes(FieldNumber.TRACE_PACKET, packet.SerializeToString())


class TraceProvenance:
    """The provenance packets of one export's files, built once from the capture's `CaptureInfo`."""

    def __init__(self, info, identity: str):
        h = info.header
        self.identity = identity
        self.boot_offset = h.clock.boottime_ns - h.clock.monotonic_ns
        self.capture_start_ns = h.clock.monotonic_ns
        self._system_info = b""
        if h.HasField("host"):
            host = h.host
            self._system_info = _framed(pt.TracePacket(system_info=pt.SystemInfo(
                utsname=pt.Utsname(sysname=host.sysname, release=host.release, version=host.version,
                                   machine=host.machine),
                num_cpus=host.cpu_count, page_size=host.page_size, timezone_off_mins=host.timezone_off_mins,
                tracing_service_version=f"{TRACING_SERVICE}{h.tool_version or 'unknown'}",
            )))
        self._run_name = f"run {h.run_id}"
        self._run_args = [annotation(k, v) for k, v in run_args(info)]

    def file_start(self, file_name: str) -> bytes:
        """The packets every file starts with after its preamble: system info and the file's trace UUID."""
        msb, lsb = trace_uuid(self.identity, file_name)
        return self._system_info + _framed(pt.TracePacket(trace_uuid=pt.TraceUuid(msb=msb, lsb=lsb)))

    def run_slice(self, start_ns: int | None, end_ns: int | None) -> bytes:
        """The Run slice over [start_ns, end_ns] (CLOCK_MONOTONIC), stamped on BOOTTIME so that it may
        come anywhere in the file; a file without events gets an empty one at the capture's start."""
        if start_ns is None or end_ns is None:
            start_ns = end_ns = self.capture_start_ns
        return boottime_slice_packets(RUN_TRACK, self._run_name, start_ns + self.boot_offset, end_ns + self.boot_offset,
                                      self._run_args)

"""`rbln-perfetto whatif` and `rbln-perfetto advise` (registered by main.py): what a change of speed or
placement would do to a profiled run, and which placement to choose.

    rbln-perfetto whatif TRACE --speedup transformer=1.25 --move vae=1 [--out PRED.pb]
    rbln-perfetto advise MODEL --devices 2 [--capacity 16GiB] [--dtype float16] [--trace T]

Both need the pipeline's memory plan, so this module (with `pipeline_run.py`) imports the pipeline
beyond its contract: each submodule is compiled on the meta device from the model's configs (no
weights), which gives its weight and peak activation bytes as the pipeline itself plans them.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from pipeline.contract import SUBMODULES

from ..analysis.advise import Candidate, candidates, overflow, placed_config, span_from_trace
from ..analysis.whatif import parse_factors, parse_moves, predict, run_facts, totals
from ..analysis.whatif_trace import write_prediction
from ..errors import UsageError
from .common import backend_args, bounded_int, load_trace, print_table, trace_file

EMBEDDED_SCALES = ("tiny", "medium")
PER_DEVICE_KEYS = ("devices", "device_memory", "ranks", "device_profile")
DTYPES = ("float32", "float16", "bfloat16")


def _size(nbytes: float) -> str:
    for unit, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(nbytes) >= unit:
            return f"{nbytes / unit:.2f} {name}"
    return f"{int(nbytes)} B"


def model_dir(model: str) -> str:
    """A diffusers SD3 directory, a shipped config name (sd3-medium) or an embedded scale (tiny, medium)."""
    if Path(model).is_dir():
        return model
    if model in EMBEDDED_SCALES:
        from pipeline.compile_cache import embedded_model

        return embedded_model(model)
    from pipeline.compiler import SHIPPED_CONFIGS

    shipped = sorted(p.name for p in SHIPPED_CONFIGS.iterdir() if p.is_dir())
    if model not in shipped:
        raise UsageError(f"model {model!r} is neither a diffusers SD3 directory, a shipped config nor an embedded "
                         f"scale; valid names: {', '.join([*shipped, *EMBEDDED_SCALES])}")
    return model


def compiled_on_meta(model: str, rbln_config: dict) -> dict:
    """submodule -> its compiled program (commands, weight and peak activation bytes), from configs alone
    (kept per model and shapes for the process: placement changes none of it)."""
    from pipeline.config import ConfigError, RBLNConfig

    try:
        cfg = RBLNConfig.from_dict(rbln_config)
        shapes = {k: v for k, v in cfg.to_dict().items() if k not in SUBMODULES and k not in PER_DEVICE_KEYS}
        return _compiled(str(model_dir(model)), json.dumps(shapes, sort_keys=True))
    except (ConfigError, ValueError, OSError) as exc:
        raise UsageError(" ".join(str(exc).split())) from None


@functools.lru_cache(maxsize=4)
def _compiled(model: str, shapes: str) -> dict:
    from pipeline.compiler import compile_on_meta
    from pipeline.config import RBLNConfig

    return compile_on_meta(model, RBLNConfig.from_dict(json.loads(shapes)))


def usage_of(compiled: dict) -> dict:
    return {name: (c.partition.weight_bytes, c.partition.peak_live_bytes) for name, c in compiled.items()}


def plan(rbln_config: dict, usage: dict):
    """The pipeline's memory plan of `rbln_config` for submodules of `usage` (weights, activations)."""
    from pipeline.config import RBLNConfig
    from pipeline.placement import memory_plan

    return memory_plan(RBLNConfig.from_dict(rbln_config), usage)


def _plan_config(rbln_config: dict) -> dict:
    """The keys of a trace's rbln_config that the memory plan reads (the rest, such as a device profile,
    is the run's business)."""
    from pipeline.config import PIPELINE_KEYS

    # (device_profile is a pipeline key, but one per logical device would not match a placement on more or
    # fewer devices, and the plan does not read it)
    return {k: v for k, v in rbln_config.items() if (k in PIPELINE_KEYS or k in SUBMODULES) and k != "device_profile"}


# --------------------------------------------------------------------------------------------- whatif


def cmd_whatif(args) -> int:
    speedup = parse_factors(args.speedup, "--speedup")
    for name, factor in parse_factors(args.slowdown, "--slowdown").items():
        speedup[name] = speedup.get(name, 1.0) / factor
    moves = parse_moves(args.move)
    path = trace_file(args)
    with load_trace(args) as tr:
        p = predict(tr, speedup, moves)
    print(f"what-if of {path}: {p.describe()}")
    if p.facts.slowdown:
        print(f"note: this trace ran with RBLN_PIPELINE_SLOWDOWN={p.facts.slowdown} (test-only): its commands were "
              "stretched on purpose")
    table = totals(p)
    print_table(table, args)
    _print_memory(p)
    if args.out:
        write_prediction(p, args.out)
        print(f"predicted run written to {args.out} (compare: rbln-perfetto diff {path} {args.out})")
    return 0


def _print_memory(p) -> None:
    """The memory plan per device as run and as predicted, from the model the trace names."""
    model = p.facts.model_dir
    if not model or not Path(model).is_dir():
        print(f"memory: not predicted: the model directory the trace names ({model or 'none'}) is not on this machine")
        return
    base = _plan_config(p.facts.rbln_config)
    usage = usage_of(compiled_on_meta(model, base))
    before = plan(base, usage)
    after = plan(placed_config(base, p.placement), usage)
    print(f"memory plan ({after.dtype}; weights + peak activations per submodule, as planned):")
    for d in range(max(len(before.capacities), len(after.capacities))):
        was = _size(before.used(d)) if d < len(before.capacities) else "-"
        state = "fits" if after.used(d) <= after.capacities[d] else "OVERFLOW"
        print(f"  device {d}: {was} -> {_size(after.used(d))} of {_size(after.capacities[d])}  {state}")


# --------------------------------------------------------------------------------------------- advise


def _roofline_span(compiled: dict, base: dict, steps: int, given: tuple = ()):
    """placement -> the span the roofline model predicts (ns): each call of a submodule takes its commands'
    roofline time (the larger of flops / peak FLOP/s and bytes / bandwidth) and its copies' bytes /
    bandwidth, on its device's profile (`given[d]`: logical device d's from rbln_config['device_profile'],
    else measured here); calls per run: two per text encoder with CFG (one without), `steps` of the
    transformer, one VAE."""
    from pipeline.config import RBLNConfig
    from pipeline.device_profiles import from_config, given_profile
    from pipeline.placement import torch_devices

    cfg = RBLNConfig.from_dict(base)
    cfg_calls = 2 if cfg.do_classifier_free_guidance else 1
    calls = {"text_encoder": cfg_calls, "text_encoder_2": cfg_calls, "text_encoder_3": cfg_calls,
             "transformer": steps, "vae": 1}
    profiles: dict[int, object] = {}

    def profile(device: int, placement: dict):
        if device not in profiles:
            placed = RBLNConfig.from_dict(placed_config(base, placement))
            spec = given[device] if device < len(given) else None
            profiles[device] = given_profile(spec, placed.dtype, placed.capacity(device)) if spec is not None else \
                from_config(placed, device, str(torch_devices(placed)[device]))()
        return profiles[device]

    per_call: dict[tuple[str, int], float] = {}

    def call_ns(name: str, device: int, placement: dict) -> float:
        if (name, device) not in per_call:
            prof = profile(device, placement)
            part = compiled[name].partition
            copies = sum(t.bytes for t in part.input_transfers) + sum(t.bytes for t in part.output_transfers)
            per_call[(name, device)] = (sum(prof.roofline_ns(cmd.flops, cmd.bytes) for cmd in part.commands)
                                        + 1e9 * copies / prof.mem_bandwidth_bytes_per_s)
        return per_call[(name, device)]

    def span_of(placement: dict) -> float:
        return sum(calls[name] * call_ns(name, placement[name], placement) for name in compiled)

    return span_of


def _given_profiles(spec, n_devices: int, base: dict) -> tuple:
    """rbln_config['device_profile'] (one for all, or per logical device 0..n_devices-1) as one checked
    profile (or None: measured) per device; () when none is given."""
    if spec is None:
        return ()
    from pipeline.config import ConfigError, RBLNConfig
    from pipeline.device_profiles import parse_device_profiles

    try:
        return parse_device_profiles(spec, n_devices, RBLNConfig.from_dict(base).dtype)
    except ConfigError as exc:
        raise UsageError(" ".join(str(exc).split())) from None


def _placement_text(c: Candidate) -> list[str]:
    lines = []
    for d in range(c.devices):
        names = [s for s, dev in c.placement.items() if dev == d]
        lines.append(f"    device {d}: {_size(c.used[d])} of {_size(c.capacities[d])}: {', '.join(names) or 'nothing'}")
    return lines


def cmd_advise(args) -> int:
    base: dict = {}
    if args.trace:
        with load_trace(args, args.trace) as tr:
            base = _plan_config(run_facts(tr).rbln_config)
    if args.config:
        text = Path(args.config).read_text() if Path(args.config).is_file() else args.config
        try:
            given = json.loads(text)
        except ValueError as exc:
            raise UsageError(f"--config is neither JSON nor a JSON file: {exc}") from None
        if not isinstance(given, dict):
            raise UsageError(f"--config must be a JSON object (an rbln_config), got {type(given).__name__}")
        base.update(given)
    if args.dtype:
        base["dtype"] = args.dtype
    for key in ("devices", "device_memory", "ranks"):  # one device count, one capacity: the advisor's
        base.pop(key, None)
    base["device_memory"] = args.capacity
    # A profile per logical device names up to --devices devices, more than a placement may use: kept
    # aside (checked against --devices) and given to each device's roofline; the plans never read it.
    given = _given_profiles(base.pop("device_profile", None), args.devices, base)
    compiled = compiled_on_meta(args.model, base)
    usage = usage_of(compiled)
    if args.trace:
        span_of, source = span_from_trace(trace_file(args, args.trace), backend=args.backend, tp_bin=args.tp_bin), \
            f"what-if replay of {args.trace}"
    else:
        span_of, source = _roofline_span(compiled, base, args.steps, given), \
            f"the roofline model over {args.steps} steps, on device profiles given or measured here"
    fitting, over = candidates(args.devices, lambda placement: plan(placed_config(base, placement), usage), span_of)
    dtype = plan(base, usage).dtype
    capacity = _size(plan(base, usage).capacities[0])
    head = f"{args.model} ({dtype}) on up to {args.devices} device{'s' if args.devices > 1 else ''} of {capacity}"
    if not fitting:
        closest = over[0]
        total = sum(w + a for w, a in usage.values())
        print(f"no placement of {head} fits: the five submodules need {_size(total)} in all; the closest placement "
              f"is {_size(overflow(closest))} over its devices' capacity")
        for line in _placement_text(closest):
            print(line)
        return 1
    print(f"{head}: {len(fitting)} of {len(fitting) + len(over)} placements fit; ranked by predicted span "
          f"({source}), then fewest devices, then most headroom")
    for k, c in enumerate(fitting[:args.top], 1):
        if c.span_ns is None:
            span = f"not predicted ({c.note.split('; valid')[0]})"
        else:
            span = f"{c.span_ns / 1e9:.1f} s" if c.span_ns >= 1e10 else f"{c.span_ns / 1e6:.3f} ms"
        print(f"#{k}  span {span}  devices {c.devices}")
        for line in _placement_text(c):
            print(line)
        config = {name: {"device": c.placement[name]} for name in c.placement if c.placement[name]}
        if args.dtype:
            config["dtype"] = args.dtype
        print(f"    rbln_config: {json.dumps(config)}")
    return 0


def add_placement_commands(sub) -> None:
    """Add `whatif` and `advise` to the `rbln-perfetto` subcommands `sub`."""
    w = sub.add_parser("whatif", help="predict a profiled run with submodules sped up, slowed down or moved")
    w.add_argument("trace", help="a trace file or a run directory")
    w.add_argument("--speedup", action="append", default=[], metavar="SUBMODULE=FACTOR",
                   help="that submodule's commands take measured time / FACTOR (repeatable)")
    w.add_argument("--slowdown", action="append", default=[], metavar="SUBMODULE=FACTOR",
                   help="that submodule's commands take measured time x FACTOR (as RBLN_PIPELINE_SLOWDOWN does)")
    w.add_argument("--move", action="append", default=[], metavar="SUBMODULE=DEVICE",
                   help="run that submodule on another logical device (repeatable)")
    w.add_argument("--out", metavar="PRED.pb", help="also write the predicted run as a trace (for diff, the UI)")
    backend_args(w)
    w.set_defaults(func=cmd_whatif)

    a = sub.add_parser("advise", help="which placement of the submodules to choose: the fitting ones, by predicted span")
    a.add_argument("model", help="a diffusers SD3 directory, a shipped config (sd3-medium) or an embedded scale "
                                 "(tiny, medium)")
    a.add_argument("--devices", type=bounded_int("a number of devices", 1, 8), default=2,
                   help="logical devices to place on (default 2)")
    a.add_argument("--capacity", default="16GiB", help="memory per device (default 16GiB, one ATOM)")
    a.add_argument("--dtype", choices=DTYPES, help="the compiled dtype (default: the trace's, else float32)")
    a.add_argument("--config", help="a base rbln_config as JSON or a JSON file (image size, guidance, ...)")
    a.add_argument("--trace", help="rank by a what-if replay of this profiled run (default: the roofline model)")
    a.add_argument("--steps", type=bounded_int("a number of steps", 1, 10**4), default=28,
                   help="denoising steps the roofline model counts (default 28)")
    a.add_argument("--top", type=bounded_int("a number of placements", 1, 10**4), default=3,
                   help="placements to print (default 3)")
    backend_args(a)
    a.set_defaults(func=cmd_advise)

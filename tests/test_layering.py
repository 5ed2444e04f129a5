"""The architecture, checked: the pipeline never imports the profiler, the contract is torch-free, the profiler
plugs in through the pipeline's hook point, and every deliberate error shares one base (which stage may import
which: tests/test_import_rules.py)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROMPT

import rbln_perfetto
from rbln_perfetto import errors

ROOT = Path(__file__).resolve().parent.parent


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if not p.name.endswith("_pb2.py"))


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a source file imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def test_pipeline_never_imports_the_profiler():
    for path in _sources("pipeline"):
        assert not [m for m in _imported_modules(path) if m.split(".")[0] == "rbln_perfetto"], path


def test_contract_modules_import_neither_torch_nor_diffusers():
    code = ("import sys, pipeline.contract, pipeline.profiling_hooks, rbln_perfetto.cli; "
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_modules_say_their_job():
    # Which stage may import which, and module length (a warning): tests/test_import_rules.py.
    for package in ("pipeline", "rbln_perfetto"):
        for path in _sources(package):
            assert ast.get_docstring(ast.parse(path.read_text())), f"{path.relative_to(ROOT)} has no docstring"


def _returns(paths) -> dict[str, str]:
    """Function name -> the class its return annotation names, over every module in `paths` (an error
    factory such as `trace_file.write_failed` is raised in the modules that import it)."""
    return {f.name: ast.unparse(f.returns) for path in paths for f in ast.walk(ast.parse(path.read_text()))
            if isinstance(f, ast.FunctionDef) and f.returns}


def _raised_names(path: Path, returns: dict[str, str]):
    """(line, class name) of every `raise X(...)`; for `raise make_error(...)`, the class that
    function is annotated to return."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            name = ast.unparse(node.exc.func)
            yield node.lineno, returns.get(name, name)


def test_every_deliberate_error_derives_from_the_base_class():
    # argparse turns ArgumentTypeError into its own one-line usage error.
    allowed = {"argparse.ArgumentTypeError"}
    sources = list(_sources("rbln_perfetto"))
    returns = _returns(sources)
    for path in sources:
        for line, name in _raised_names(path, returns):
            if name in allowed:
                continue
            cls = getattr(errors, name, None) or getattr(rbln_perfetto, name, None)
            assert isinstance(cls, type) and issubclass(cls, errors.RblnPerfettoError), \
                f"{path.relative_to(ROOT)}:{line} raises {name}, not an RblnPerfettoError"
    for name in rbln_perfetto.__all__:
        obj = getattr(rbln_perfetto, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, errors.RblnPerfettoError), name


def _run_pipeline_script(compiled: Path, env_profiler: str | None, out: Path) -> str:
    """Run one pipeline call in a fresh process that never imports rbln_perfetto itself."""
    script = f"""
import sys, torch
from pipeline import RBLNStableDiffusion3Pipeline
pipe = RBLNStableDiffusion3Pipeline.from_pretrained({str(compiled)!r})
pipe.set_progress_bar_config(disable=True)
pipe({PROMPT!r}, num_inference_steps=1, output_type="np", generator=torch.Generator().manual_seed(0))
print("rbln_perfetto loaded:", "rbln_perfetto" in sys.modules)
"""
    env = {"PATH": "/usr/bin:/bin", "RBLN_PROFILER_DIR": str(out), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if env_profiler is not None:
        env["RBLN_PROFILER"] = env_profiler
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("env_profiler,rbln_config,files", [
    ("1", {}, 8),  # 6 text-encoder calls, 1 transformer step, 1 VAE
    (None, {"vae": {"activate_profiler": True}}, 1),  # activate_profiler: True alone profiles its submodule
    (None, {}, 0),
    ("0", {}, 0),
])
def test_rbln_profiler_works_without_importing_rbln_perfetto(compiled_dirs, tmp_path, env_profiler, rbln_config, files):
    stdout = _run_pipeline_script(compiled_dirs(rbln_config), env_profiler, tmp_path)
    # Asked for, the pipeline loads the entry point; not asked for, profiling costs no import at all.
    assert f"rbln_perfetto loaded: {bool(files)}" in stdout
    runs = list(tmp_path.iterdir()) if tmp_path.exists() else []
    if not files:
        assert runs == []
        return
    (run_dir,) = runs
    assert (run_dir / "aggregate.pb").is_file()
    assert len(list(run_dir.glob("0*.pb"))) == files


def test_host_timers_are_installed_once(make_pipe, tmp_path):
    pipe = make_pipe({})
    seams = (pipe.tokenizer, pipe.scheduler.step, pipe.image_processor.postprocess)
    with rbln_perfetto.profile(tmp_path / "a"):
        pipe(PROMPT, num_inference_steps=1, output_type="np")
    pipe(PROMPT, num_inference_steps=1, output_type="np")
    assert (pipe.tokenizer, pipe.scheduler.step, pipe.image_processor.postprocess) == seams


def test_host_timers_survive_what_diffusers_users_do(make_pipe, tmp_path):
    import copy
    import pickle

    from diffusers import FlowMatchEulerDiscreteScheduler
    from trace_checks import track_name
    from trace_objects import read_trace

    pipe = make_pipe({})
    tokenizer_class = type(pipe.tokenizer._target)
    assert isinstance(pipe.tokenizer, tokenizer_class)
    for clone in (copy.deepcopy(pipe.tokenizer), pickle.loads(pickle.dumps(pipe.tokenizer))):
        assert type(clone) is tokenizer_class and clone("a cat").input_ids == pipe.tokenizer("a cat").input_ids
    # The usual diffusers scheduler swap keeps the scheduler's host slices.
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with rbln_perfetto.profile(tmp_path / "run") as prof:
        pipe(PROMPT, num_inference_steps=2, output_type="np")
    trace = read_trace(prof.aggregate_file)
    host = [s.name for s in trace.slices if track_name(trace, s) == "Host"]
    assert host.count("scheduler_step") == 2 and host.count("guidance_combine") == 2

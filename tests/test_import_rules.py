"""Which stage may import which, like Perfetto's tools/check_imports.py: an allowlist, checked on every module.

The data flows one way (docs/architecture.md):

    pipeline run -> recorder -> capture file -> exporter -> trace files -> reader -> query -> analysis -> cli

`RULES` says, per stage, which stages its modules may import; `EXCEPTIONS` names the few modules that may
reach one stage further, each with its reason. Imports inside functions count as much as top-level ones:
a lazy import is still a dependency. This replaces a cap on module length as the structural guard; length
is only a warning (`test_long_modules_and_functions_are_flagged`).
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "rbln_perfetto"
VOCABULARY = "vocabulary"  # the top level's shared modules: errors, naming, proto_bytes, progress, the capture schema
FACADE = "facade"  # rbln_perfetto/__init__.py: re-exports only

# stage -> the stages (besides itself) its modules may import.
RULES: dict[str, set[str]] = {
    VOCABULARY: set(),
    "recorder": {VOCABULARY},
    "exporter": {VOCABULARY},
    "reader": {VOCABULARY},
    "query": {VOCABULARY, "reader"},
    "analysis": {VOCABULARY, "reader", "query"},
    "cli": {VOCABULARY, "recorder", "exporter", "reader", "query", "analysis"},
    FACADE: {VOCABULARY, "recorder", "exporter", "reader", "query", "analysis"},
}
# (importing module or package prefix, imported module or package prefix): why this edge is allowed.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("rbln_perfetto.recorder.activation", "rbln_perfetto.exporter"):
        "profile() hands its capture to the exporter when it ends",
    ("rbln_perfetto.exporter", "rbln_perfetto.recorder.capture"): "the capture file is the exporter's input",
    ("rbln_perfetto.exporter", "rbln_perfetto.recorder.run_directory"):
        "the exporter writes into a run directory and keeps runs apart as the recorder does",
    ("rbln_perfetto.analysis.overlay", "rbln_perfetto.exporter.slice_packets"):
        "the critical-path overlay is a trace file, framed as the exporter frames slices",
    ("rbln_perfetto.analysis.whatif_trace", "rbln_perfetto.exporter.slice_packets"):
        "a what-if's predicted run is a trace file, framed as the exporter frames slices",
}
# The pipeline modules the profiler may import (torch-free); cli/pipeline_run.py alone drives the whole pipeline.
PIPELINE_CONTRACT = {"pipeline.contract", "pipeline.profiling_hooks"}
# (and cli/placement_commands.py compiles on the meta device for the memory plan of whatif and advise)
PIPELINE_DRIVERS = {"rbln_perfetto.cli.pipeline_run", "rbln_perfetto.cli.placement_commands"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if not p.name.endswith("_pb2.py")}


def _known(modules: dict[str, Path]) -> set[str]:
    """Every importable module of the package, the generated schema and the C extensions included."""
    known = set(modules) | {"rbln_perfetto.rbln_capture_pb2"}
    for c_source in PACKAGE.rglob("*.c"):
        known.add(_module_name(c_source.with_suffix(".py")))
    return known


def _imports(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the module, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            submodules = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            out.extend((m, [], node.lineno) for m in submodules)
            rest = [n for n in names if f"{base}.{n}" not in known]
            if rest or not submodules:
                out.append((base, rest, node.lineno))
    return out


def stage_of(module: str) -> str | None:
    """The stage a module of rbln_perfetto belongs to; None outside the package."""
    parts = module.split(".")
    if parts[0] != "rbln_perfetto":
        return None
    if len(parts) == 1:
        return FACADE
    return parts[1] if parts[1] in RULES else VOCABULARY


def _excepted(importer: str, imported: str) -> bool:
    def under(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    return any(under(importer, a) and under(imported, b) for a, b in EXCEPTIONS)


def _graph():
    modules = _modules()
    known = _known(modules)
    return modules, {name: _imports(name, path, known) for name, path in modules.items()}


def test_every_module_belongs_to_a_stage_and_the_top_level_is_small():
    modules = _modules()
    top_level = sorted(n for n in modules if n.count(".") == 1 and stage_of(n) == VOCABULARY)
    packages = sorted({n.split(".")[1] for n in modules if n.count(".") >= 2})
    assert set(packages) <= set(RULES), f"packages with no rule: {sorted(set(packages) - set(RULES))}"
    # The facade and the shared vocabulary only (the bound: about 8 modules).
    assert len(top_level) + 1 <= 8, top_level


def test_stages_import_only_what_the_rules_allow():
    _, graph = _graph()
    wrong = []
    for importer, imports in graph.items():
        own = stage_of(importer)
        for imported, _, line in imports:
            other = stage_of(imported)
            if other is None or other == own or other in RULES[own] or _excepted(importer, imported):
                continue
            wrong.append(f"{importer}:{line} ({own}) imports {imported} ({other})")
    assert not wrong, "\n".join(wrong)


def test_every_exception_is_still_used():
    _, graph = _graph()
    used = {(a, b) for a, b in EXCEPTIONS
            for importer, imports in graph.items() for imported, _, _ in imports
            if _excepted(importer, imported) and (importer + ".").startswith(a + ".")
            and (imported + ".").startswith(b + ".")}
    assert used == set(EXCEPTIONS), f"unused exceptions: {sorted(set(EXCEPTIONS) - used)}"


def test_only_the_pipeline_driver_imports_the_pipeline_beyond_its_contract():
    _, graph = _graph()
    for importer, imports in graph.items():
        if importer in PIPELINE_DRIVERS:
            continue
        beyond = sorted({m for m, _, _ in imports if m.split(".")[0] == "pipeline"
                         and m not in PIPELINE_CONTRACT and m.rpartition(".")[0] not in PIPELINE_CONTRACT})
        assert not beyond, f"{importer} imports {beyond}"


def test_no_module_takes_private_names_from_another_package():
    _, graph = _graph()
    wrong = []
    for importer, imports in graph.items():
        for imported, names, line in imports:
            if stage_of(imported) is None:
                continue
            home = imported.rpartition(".")[0] if imported.count(".") > 1 else imported
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            private_module = imported.rpartition(".")[2].startswith("_") and not imported.endswith("__init__")
            own_package = importer.rpartition(".")[0] if importer in graph else importer
            if (private or private_module) and not (own_package == home or importer.startswith(home + ".")):
                wrong.append(f"{importer}:{line} takes {private or imported} from {imported}")
    assert not wrong, "\n".join(wrong)


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    edges = {a: sorted({m for m, _, _ in imports if m in graph and m != a}) for a, imports in graph.items()}
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_circles():
    _, graph = _graph()
    # A package's __init__ re-exporting its modules is not a circle with them: leave those edges out.
    graph = {a: [(m, n, line) for m, n, line in imports if not (a.startswith(m + ".") and m in graph)]
             for a, imports in graph.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    graph = {"a": [("b", [], 1)], "b": [("c", [], 1)], "c": [("a", [], 1)], "d": [("a", [], 1)]}
    assert _cycles(graph) == [["a", "b", "c"]]


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_long_modules_and_functions_are_flagged():
    """A warning, not a failure: modules are split by job, not by size; a long one is worth a look."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "pipeline").rglob("*.py")):
        if path.name.endswith("_pb2.py"):
            continue
        text = path.read_text()
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}() {length} lines")
    if long:
        warnings.warn(f"over {MAX_MODULE_LINES} lines per module or {MAX_FUNCTION_LINES} per function: "
                      + "; ".join(long), stacklevel=1)


def test_the_rules_catch_a_wrong_import(tmp_path):
    """The checker itself: an exporter module importing the query stage is reported."""
    assert stage_of("rbln_perfetto.exporter.export") == "exporter"
    assert stage_of("rbln_perfetto.query.reports") == "query" and "query" not in RULES["exporter"]
    assert stage_of("rbln_perfetto.errors") == VOCABULARY and stage_of("rbln_perfetto") == FACADE
    assert stage_of("numpy") is None
    assert _excepted("rbln_perfetto.recorder.activation", "rbln_perfetto.exporter.export")
    assert not _excepted("rbln_perfetto.recorder.ranges", "rbln_perfetto.exporter.export")
    source = tmp_path / "rbln_perfetto" / "exporter" / "bad.py"
    source.parent.mkdir(parents=True)
    source.write_text('"""x"""\nfrom ..query.reports import REPORTS\nfrom ..errors import _private\n')
    found = _imports("rbln_perfetto.exporter.bad", source, {"rbln_perfetto.query.reports"})
    assert found == [("rbln_perfetto.query.reports", ["REPORTS"], 2), ("rbln_perfetto.errors", ["_private"], 3)]

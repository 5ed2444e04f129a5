"""Which trace files a set of paths names, and the label each is shown under.

A file is taken as given. A directory contributes the `.pb` files under it (searched recursively, so
a directory of run directories gives every run; a merged run split across processes gives its merged
traces, not its `rank<N>/` directories' own again), chosen by `files`:

    "invocations"  a run's per-invocation traces (`0006_transformer_0.pb`), not `aggregate.pb`, which
                   holds the same slices again (the default: all invocations of a run, or of many runs)
    "aggregate"    each run's `aggregate.pb` (one trace per run: many runs side by side)
    "all"          every `*.pb` file (traces named otherwise, e.g. a folder of `trace.pb` cases)

A directory's files come in path order (invocation files are named in run order); the paths given
keep their order. A trace's label is its path relative to the directory that holds all of the traces
(a file name when they share one directory; `run-a/0006_transformer_0.pb` for several runs).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import TraceNotFoundError, UsageError
from ..naming import AGGREGATE_FILE_NAME, RANK_DIR, merged_ranks, parse_invocation_file_name

FILES = ("invocations", "aggregate", "all")
_SHOWN = 3  # file names an error lists before "..."


def _chosen(name: str, files: str) -> bool:
    if files == "invocations":
        return parse_invocation_file_name(name) is not None
    if files == "aggregate":
        return name == AGGREGATE_FILE_NAME
    return True


def _pb_files(folder: Path) -> list[Path]:
    """Every `.pb` file under `folder`, but not those of a merged run's `rank<N>/` directories (the
    merged traces beside them hold the same slices again)."""
    found = []
    for parent, dirs, names in os.walk(folder):
        if merged_ranks(Path(parent)):
            dirs[:] = [d for d in dirs if not RANK_DIR.match(d)]
        found += [Path(parent) / n for n in names if n.endswith(".pb") and (Path(parent) / n).is_file()]
    return sorted(found)


def _directory_traces(folder: Path, files: str) -> list[Path]:
    found = _pb_files(folder)
    chosen = [p for p in found if _chosen(p.name, files)]
    if chosen:
        return chosen
    want = {"invocations": "per-invocation traces (NNNN_<submodule>_<call>.pb)", "aggregate": AGGREGATE_FILE_NAME,
            "all": ".pb files"}[files]
    others = ""
    if found:
        names = ", ".join(str(p.relative_to(folder)) for p in found[:_SHOWN]) + (", ..." if len(found) > _SHOWN else "")
        others = f"; it holds {len(found)} other .pb file{'s' if len(found) > 1 else ''} ({names}): choose them with files='all'"
        if any(p.name == AGGREGATE_FILE_NAME for p in found):
            others += " or files='aggregate'"
        others += " (--files on the command line)"
    raise TraceNotFoundError(f"{folder}: no {want} under this directory (files={files!r}){others}")


def trace_paths(paths_or_dir, files: str = "invocations") -> list[Path]:
    """The trace files that `paths_or_dir` (a path, or a list of paths: files and directories) names."""
    if files not in FILES:
        raise UsageError(f"files={files!r} is not valid; valid: {', '.join(FILES)}")
    given = [paths_or_dir] if isinstance(paths_or_dir, (str, os.PathLike)) else list(paths_or_dir)
    if not given:
        raise UsageError("no traces given: pass a trace file, a run directory, or a list of them")
    out: list[Path] = []
    seen: dict[str, Path] = {}
    for item in given:
        path = Path(item)
        if path.is_dir():
            found = _directory_traces(path, files)
        elif path.is_file():
            found = [path]
        else:
            raise TraceNotFoundError(f"{path}: no such trace file or directory")
        for p in found:
            key = os.path.realpath(p)
            if key in seen:
                raise UsageError(f"{p}: given twice (also as {seen[key]}); each trace may appear once in a set")
            seen[key] = p
            out.append(p)
    return out


def trace_labels(paths: list[Path]) -> list[str]:
    """Each path relative to the directory that holds them all, with `/` separators."""
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    return [Path(os.path.relpath(p, root)).as_posix() for p in absolute]

"""The trace_processor backend: Perfetto's own engine through the `perfetto` package.

The binary is `tp_bin`, else `$RBLN_PERFETTO_TP_BIN`, else the one the `perfetto` package pins
and caches (downloaded on first use where the internet is reachable).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..errors import TraceProcessorBinaryError, TraceProcessorError, TraceReadError
from ..reader.diagnosis import trace_file_problem
from .perfetto_sql import trace_processor_flags
from .tp_results import result_frame, sql_error

TP_BIN_ENV = "RBLN_PERFETTO_TP_BIN"


def configured_binary(tp_bin: str | None = None) -> str | None:
    path = tp_bin or os.environ.get(TP_BIN_ENV)
    if path and not (Path(path).is_file() and os.access(path, os.X_OK)):
        source = "tp_bin" if tp_bin else TP_BIN_ENV
        raise TraceProcessorBinaryError(f"{source}={path!r} is not an executable trace_processor binary")
    return path


def _prebuilt_manifest() -> list[dict]:
    from perfetto.prebuilts.manifests.trace_processor_shell import TRACE_PROCESSOR_SHELL_MANIFEST

    return TRACE_PROCESSOR_SHELL_MANIFEST


def _prebuilt_entry() -> dict | None:
    plat, machine = sys.platform.lower(), platform.machine().lower()
    return next((e for e in _prebuilt_manifest()
                 if e.get("platform") == plat and machine in e.get("machine", []) and e.get("url")), None)


def prebuilt_cache_path() -> Path | None:
    """Where the `perfetto` package keeps its downloaded trace_processor for this machine (None: it has
    no prebuilt for it). Mirrors `perfetto.prebuilts.perfetto_prebuilts.download_or_get_cached`, so
    a cached binary is found without calling the package's download; a test checks the two agree."""
    entry = _prebuilt_entry()
    if entry is None:
        return None
    root, ext = os.path.splitext(entry["file_name"])
    return Path.home() / ".local" / "share" / "perfetto" / "prebuilts" / f"{root}-{entry['sha256'][:16]}{ext}"


def find_binary(tp_bin: str | None = None, *, download: bool = False) -> str | None:
    """A usable trace_processor: configured, else the package's cached prebuilt, else (if `download`)
    the package's download; None when there is none."""
    path = configured_binary(tp_bin)
    if path:
        return path
    cached = prebuilt_cache_path()
    if cached is None:
        return None
    if cached.is_file():
        return str(cached)
    if not download:
        return None
    from perfetto.prebuilts.perfetto_prebuilts import get_perfetto_prebuilt

    global last_download_error
    with _stderr_captured() as captured:
        try:
            return get_perfetto_prebuilt(_prebuilt_manifest())
        except Exception as exc:  # no network, no curl, checksum mismatch: there is no binary
            lines = [line.strip() for line in captured().splitlines() if line.strip()]
            last_download_error = lines[-1] if lines else f"{type(exc).__name__}: {exc}"
            return None


last_download_error = ""


@contextmanager
def _stderr_captured():
    """The download prints and shells out to curl, whose output would bury our one-line error."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read().decode(errors="replace"))[1]
        finally:
            sys.stdout.flush()
            for fd, copy in zip((1, 2), saved):
                os.dup2(copy, fd)
                os.close(copy)


def no_binary_message() -> str:
    why = f" (its download failed: {last_download_error})" if last_download_error else ""
    return (f"no trace_processor binary: set {TP_BIN_ENV} or pass --tp-bin; the perfetto package could not "
            f"provide one{why}")


class TraceProcessorBackend:
    """A trace loaded into a trace_processor subprocess. The file is diagnosed first, with the embedded
    reader's own words, so both backends fail the same way on a file that is not a (whole) trace."""

    name = "trace_processor"

    @staticmethod
    def available(tp_bin: str | None = None) -> bool:
        """Whether a binary is configured or already cached (one is downloaded only when asked for by name)."""
        return find_binary(tp_bin) is not None

    def __init__(self, path: str | Path, tp_bin: str | None = None):
        from perfetto.trace_processor import TraceProcessor, TraceProcessorConfig, TraceProcessorException

        self.path = Path(path)
        problem = trace_file_problem(self.path, json_and_gzip=True)  # (trace_processor reads those two itself)
        if problem is not None:
            raise TraceReadError(f"{self.path}: {problem}")
        binary = find_binary(tp_bin, download=True)
        if binary is None:
            raise TraceProcessorError(f"{no_binary_message()}; or use the embedded backend (backend='sqlite')")
        try:
            config = TraceProcessorConfig(bin_path=binary, extra_flags=trace_processor_flags())  # (the rbln package)
            self.tp = TraceProcessor(trace=str(self.path), config=config)
        except TraceProcessorException as exc:
            text = " ".join(str(exc).split())
            if text.startswith(_PARSE_FAILED):  # it started, and rejected the file
                reason = text[len(_PARSE_FAILED):].strip(" .:") or "no reason given"
                raise TraceReadError(f"{self.path}: trace_processor cannot read it: {reason}") from None
            raise _cannot_start(binary, text) from None
        except OSError as exc:  # not a program this machine runs (exec format error, permission, ...)
            raise _cannot_start(binary, f"{type(exc).__name__}: {exc.strerror or exc}") from None
        except Exception as exc:  # it died while reading the file (connection lost, ...)
            raise TraceProcessorError(f"trace_processor ({binary}) failed while reading {self.path}: "
                                      f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None

    def unfinished_slices(self) -> int:
        """How many slices begin and never end (trace_processor gives them dur = -1)."""
        return int(self.query("select count(*) as n from slice where dur = -1").n.iloc[0])

    def query(self, sql: str):
        from perfetto.trace_processor import TraceProcessorException

        try:
            return result_frame(self.tp.query(sql))
        except TraceProcessorException as exc:
            raise sql_error(str(exc)) from None

    def close(self) -> None:
        self.tp.close()


# How the perfetto package words a trace that trace_processor started for and then rejected.
_PARSE_FAILED = "Failed while parsing trace. Error message:"


def _cannot_start(binary: str, reason: str) -> TraceProcessorError:
    return TraceProcessorError(
        f"trace_processor binary {binary} cannot start ({reason[:300]}); point {TP_BIN_ENV} or --tp-bin at a "
        "working trace_processor_shell, or use the embedded backend (backend='sqlite')")


"""The bad-input catalogue: one table of every malformed input a user can give, and what each must do.

Every row must give a one-line error that names what is wrong and what is valid, a non-zero exit
(or an exception from the Python API), and leave every file and directory as it was.
"""

import gzip
import json
import re
from pathlib import Path

import pytest
from conftest import run
from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pt
from reference_traces import reference_trace
from synthetic import program, write_capture
from test_config import BAD as BAD_CONFIGS

import rbln_perfetto
from rbln_perfetto.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Good and bad files, made once: a capture and its traces, and everything that is not one."""
    d = tmp_path_factory.mktemp("inputs")
    prog = program("transformer", 0, [("blocks.0.ff", "linear", i, 2, "[1, 8]", 64, 128, 64) for i in range(2)])
    capture = write_capture(d / "capture.rblncap", [prog], [(0, [5, 5])] * 3)
    rbln_perfetto.export(capture, d / "traces")
    aggregate = (d / "traces" / "aggregate.pb").read_bytes()
    foreign = pt.Trace()
    foreign.packet.add().process_tree.processes.add(pid=1, cmdline=["init"])
    files = {
        "empty": b"",
        "text": b"hello, not a trace\n",
        "chrome.json": b'{"traceEvents": []}',
        "gzip": gzip.compress(aggregate, mtime=0),  # (a fixed header: its bytes appear in a message)
        "truncated": aggregate[: len(aggregate) * 2 // 3],
        "foreign": foreign.SerializeToString(),
        "config.json": json.dumps({"vae": {"devcie": 1}}).encode(),
        "not-json.json": b"device: 1\n",
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


@pytest.fixture(scope="module")
def own_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _own_cache(_clean_env, own_cache, monkeypatch):
    """The commands here use a compile cache of this module's own: the check that a bad input changed no
    file reads the whole cache they could write to, and the session's is written meanwhile by the run's
    other worker (and is larger: reading it twice per case costs more than building the model here once)."""
    monkeypatch.setenv("RBLN_PERFETTO_CACHE", str(own_cache))


def _files(d: Path) -> dict:
    return {
        "missing": d / "missing.pb", "dir": d / "traces", "empty": d / "empty", "text": d / "text",
        "json": d / "chrome.json", "gzip": d / "gzip", "truncated": d / "truncated", "foreign": d / "foreign",
        "capture": d / "capture.rblncap", "trace": d / "traces" / "aggregate.pb", "tp-reference": reference_trace("flows"),
        "config": d / "config.json", "not-json": d / "not-json.json",
    }


NOT_A_TRACE = {
    "missing": "no such trace file",
    "dir": "is a directory, not a trace file",
    "empty": "empty file, not a Perfetto trace",
    "text": r"not a Perfetto protobuf trace \(its bytes do not parse as TracePackets\)",
    "json": "a JSON trace .*; this reader takes Perfetto protobuf traces",
    "gzip": "gzip-compressed: decompress it first",
    "truncated": r"a truncated or corrupt Perfetto trace: a packet of \d+ bytes cut short after \d+ at byte offset \d+",
    "foreign": r"holds no TrackEvent data this reader understands \(found process_tree x1\); read it with the trace_processor",
    "capture": "an rbln-perfetto capture, not a trace: export it first with `rbln-perfetto export`",
}
NOT_A_CAPTURE = {
    "missing": "no such capture file at byte offset 0",
    "dir": "is a directory, not a capture file",
    "empty": r"not an rbln-perfetto capture \(empty file\) at byte offset 0",
    "text": r"not an rbln-perfetto capture \(starts with b'hello, n', not b'RBLNCAP1'\) at byte offset 0",
    "json": r"not an rbln-perfetto capture \(starts with b'\{\"traceE', not b'RBLNCAP1'\)",
    "gzip": r"not an rbln-perfetto capture \(starts with b'\\x1f\\x8b",
    "trace": "it looks like a Perfetto trace: export takes the capture.rblncap of a profiled run",
    "tp-reference": "it looks like a Perfetto trace: export takes the capture.rblncap of a profiled run",
}

# (id, how, input, exit code, what the one line must say). how: "cli" runs `rbln-perfetto ARGV` ({name} is a
# file from `inputs`); "env" sets RBLN_PROFILER* and calls the pipeline from Python.
CASES = []
for bad, message in BAD_CONFIGS:
    if isinstance(bad, dict):
        CASES.append((f"config-{message[:30]}", "cli", ["run", "--config", json.dumps(bad)], 1, message))
CASES += [
    ("config-list", "cli", ["run", "--config", json.dumps([["vae", 1]])], 2,
     r"--config must be a JSON object like \{\"text_encoder_3\": \{\"device\": 1\}\}, got list"),
    ("config-not-json", "cli", ["run", "--config", "{not json"], 2,
     "--config is neither a JSON object nor a readable JSON file: Expecting property name"),
    ("config-file-bad-key", "cli", ["run", "--config", "{config}"], 1,
     r"rbln_config\['vae'\] key 'devcie' is not valid; valid keys: device, activate_profiler"),
    ("config-file-not-json", "cli", ["run", "--config", "{not-json}"], 2, "is neither a JSON object nor a readable JSON file"),
    ("config-cuda-absent", "cli", ["run", "--config", json.dumps({"devices": ["cpu", "cuda:1"], "vae": {"device": 1}})], 1,
     r"rbln_config\['devices'\]\[1\]='cuda:1' is not available: this machine has \d+ CUDA device\(s\); valid"),
    ("config-memory-overflow", "cli", ["run", "--config", json.dumps({"device_memory": "1 MiB"})], 1,
     r"device 0: [\d.]+ MiB of 1\.0 MiB: .*transformer [\d.]+ [KM]iB \(weights .*exceeds its capacity. To fit: no placement fits these capacities \(text_encoder_3 alone needs [\d.]+ MiB\); "
     r"or raise rbln_config\['device_memory'\] to at least [\d.]+ MiB"),
    ("config-contradicts-flag", "cli", ["run", "--height", "64", "--width", "64", "--config", '{"img_height": 128, "img_width": 128}'],
     2, r"--height 64 contradicts rbln_config\['img_height'\]=128; give one of them"),
]
for value in ("2", "enable", "tru", "on please", "-1"):
    CASES.append((f"RBLN_PROFILER={value}", "env", {"RBLN_PROFILER": value}, 1,
                  rf"RBLN_PROFILER='{value}' is not valid; valid: 1, true, yes, on to enable, 0, false, no, off or unset to disable"))
CASES.append(("RBLN_PROFILER_DIR-under-a-file", "env", {"RBLN_PROFILER": "1", "RBLN_PROFILER_DIR": "{text}/profiles"}, 1,
              r"output directory .*text/profiles/.* is not writable: Not a directory"))
for name, message in NOT_A_CAPTURE.items():
    CASES.append((f"export-{name}", "cli", ["export", f"{{{name}}}", "-o", "{out}"], 1, message))
for command, extra in (("summary", []), ("query", ["select 1"]), ("plot", ["-o", "{out}/timeline.png"])):
    for name, message in NOT_A_TRACE.items():
        if name == "dir":
            continue  # a run directory is read: query's traces as one set (tests/test_trace_set.py), summary's
            # and plot's aggregate.pb (tests/test_cli_behaviour.py)
        CASES.append((f"{command}-{name}", "cli", [command, f"{{{name}}}", *extra, "--backend", "sqlite"], 1, message))
CASES += [
    ("no-command", "cli", [], 2, "the following arguments are required: COMMAND"),
    ("unknown-command", "cli", ["frobnicate"], 2, r"invalid choice: 'frobnicate' \(choose from 'run', 'export', 'summary'"),
    ("unknown-flag", "cli", ["run", "--bogus"], 2, "unrecognized arguments: --bogus"),
    ("steps-not-int", "cli", ["run", "--steps", "two"], 2, "argument --steps: invalid int value: 'two'"),
    ("steps-zero", "cli", ["run", "--steps", "0"], 2, "--steps 0 must be >= 1"),
    ("height-alone", "cli", ["run", "--height", "64"], 2, "give --height and --width together"),
    ("guidance-not-float", "cli", ["run", "--guidance", "abc"], 2, "argument --guidance: invalid float value: 'abc'"),
    ("scale-unknown", "cli", ["run", "--scale", "huge"], 2, r"argument --scale: invalid choice: 'huge' \(choose from 'tiny', 'medium'\)"),
    ("model-not-sd3", "cli", ["run", "--model", "{dir}"], 2, r"--model .* is not a diffusers SD3 directory \(no model_index.json\)"),
    ("out-under-a-file", "cli", ["run", "--out", "{text}/out"], 1, "output directory .*/text/out is not writable: Not a directory"),
    ("export-no-capture", "cli", ["export"], 2, "the following arguments are required: capture"),
    ("export-out-under-a-file", "cli", ["export", "{capture}", "-o", "{text}/out"], 1,
     "output directory .*/text/out is not writable: Not a directory"),
    ("query-no-sql", "cli", ["query", "{trace}"], 2, "the following arguments are required: sql"),
    ("query-csv-and-json", "cli", ["query", "{trace}", "select 1", "--csv", "--json"], 2,
     "argument --json: not allowed with argument --csv"),
    ("query-unknown-backend", "cli", ["query", "{trace}", "select 1", "--backend", "duckdb"], 2,
     r"argument --backend: invalid choice: 'duckdb' \(choose from 'auto', 'sqlite', 'trace_processor'\)"),
    ("query-bad-column", "cli", ["query", "{trace}", "select nonsense from slice", "--backend", "sqlite"], 1,
     "SQL error: no such column: nonsense"),
    ("query-bad-syntax", "cli", ["query", "{trace}", "select * from", "--backend", "sqlite"], 1, "SQL error: incomplete input"),
    ("query-write", "cli", ["query", "{trace}", "drop table slice", "--backend", "sqlite"], 1, "SQL error"),
    ("query-bad-tp-bin", "cli", ["query", "{trace}", "select 1", "--backend", "trace_processor", "--tp-bin", "{text}"], 1,
     r"tp_bin='.*/text' is not an executable trace_processor binary"),
    ("plot-out-dir-missing", "cli", ["plot", "{trace}", "-o", "{missing}/x.png", "--backend", "sqlite"], 1,
     r"No such file or directory: '.*missing.pb/x.png'"),
    ("serve-missing", "cli", ["serve", "{missing}"], 1, "no such trace file"),
    ("serve-bad-port", "cli", ["serve", "{trace}", "--port", "http"], 2, r"argument --port: 'http' is not a port; valid: 0\.\.65535 \(0: any free port\)"),
    ("serve-bad-tp-bin", "cli", ["serve", "{trace}", "--tp-bin", "{missing}"], 1,
     r"tp_bin='.*missing.pb' is not an executable trace_processor binary"),
]


def snapshot(*roots: Path) -> dict:
    """Every path under `roots` with its bytes (files) or None (directories)."""
    out = {}
    for root in roots:
        if root.exists():
            for p in sorted(root.rglob("*")):
                out[str(p)] = None if p.is_dir() else (p.stat().st_mtime_ns, p.read_bytes())
    return out


@pytest.mark.parametrize("case_id,how,given,code,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, how, given, code, message, inputs, make_pipe, tmp_path, monkeypatch, capsys):
    from pipeline.compile_cache import cache_dir, embedded_model

    if case_id == "config-memory-overflow":
        embedded_model()  # the plan needs the model's sizes; building the cached model is not the error's doing
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    names = {k: str(v) for k, v in _files(inputs).items()} | {"out": str(work / "out")}

    def fill(text):
        return re.sub(r"\{([a-z-]+)\}", lambda m: names.get(m.group(1), m.group(0)), text)

    pipe = make_pipe() if how == "env" else None
    before = snapshot(inputs, work, cache_dir())

    if how == "cli":
        try:
            exit_code = main([fill(a) for a in given])
        except SystemExit as exc:  # argparse
            exit_code = exc.code
        out, err = capsys.readouterr()
        assert out == ""
    else:
        for key, value in given.items():
            monkeypatch.setenv(key, fill(value))
        with pytest.raises(Exception) as raised:
            run(pipe, steps=1)
        exit_code, err = 1, f"{type(raised.value).__name__}: {raised.value}\n"

    assert exit_code == code, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert "Traceback" not in err
    assert re.search(message, err), f"{err!r} does not say {message!r}"
    assert snapshot(inputs, work, cache_dir()) == before, "a bad input changed the files"

"""The example outputs in README.md and docs/ cannot drift: each is a generated block (docs/generate.py,
`make docs`) whose command still runs and prints output of the same shape, and none is written by hand.

Timings differ from run to run, so a block's shape is what does not: every line without a digit
(messages, table headers, file names) as it reads, and the label of every line with one (its first
word, numbers masked: a table's row label, `FAIL`, a file's name).
"""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
generate = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)

DOCUMENTS = generate.documents()
FENCE = re.compile(r"^```(?P<lang>[^\n]*)\n(?P<body>.*?)^```$", re.S | re.M)
NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:e[-+]?\d+)?")
# What an ungenerated `sh` block may hold: commands to type, never what they print.
COMMAND_STARTS = ("rbln-perfetto ", "python ", "python3 ", "torchrun ", "make ", "tp=", "RBLN_PROFILER")
# A measured quantity in prose (a percentage, a duration): only a generated block may show one.
MEASURED = re.compile(r"\b\d+(?:\.\d+)?\s?(?:%|ms|us|s)(?![\w-])")


def _shape(output: str) -> tuple[list[str], list[str]]:
    lines = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
    fixed = sorted({line for line in lines if not re.search(r"\d", line)})
    labels = sorted({NUMBER.sub("#", line.split()[0]) for line in lines if re.search(r"\d", line)})
    return fixed, labels


def _documented_output(block) -> str:
    prompt = f"```console\n$ {block.command}\n"
    assert block.body.startswith(prompt) and block.body.endswith("```\n"), (
        f"{block.document.name}: the block of `{block.command}` must be a console block that starts with "
        f"`$ {block.command}`; run `make docs`")
    return block.body[len(prompt):-len("```\n")]


def _hand_written_text(document: Path) -> str:
    """The document without its generated blocks."""
    return generate.BLOCK.sub("", document.read_text())


@pytest.mark.parametrize("document", [*DOCUMENTS, ROOT / "bench" / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_example_output_is_written_by_hand(document):
    text = _hand_written_text(document)
    for fence in FENCE.finditer(text):
        lang, lines = fence["lang"], fence["body"].splitlines()
        where = f"{document.name}: block {fence.group(0)[:60]!r}"
        assert lang in ("sh", "python", "text"), (
            f"{where}: an example output belongs in a generated block (docs/generate.py); other blocks are "
            f"sh (commands), python or text (diagrams), not {lang or 'untagged'}")
        if lang == "sh":
            for previous, line in zip(["", *lines], lines):
                assert line.startswith(COMMAND_STARTS) or previous.endswith("\\"), (
                    f"{where}: {line!r} is not a command; its output belongs in a generated block")
        if lang == "python":
            assert not any(line.startswith(">>>") for line in lines), f"{where}: a session's output belongs in a generated block"
        if lang == "text":
            assert not re.search(r"^\$ |\d\.\d", fence["body"], re.M), f"{where}: holds a command's output"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_prose_quotes_no_measured_number(document):
    prose = FENCE.sub("", _hand_written_text(document))
    prose = re.sub(r"`[^`]*`", "", prose)  # option values and constants in code spans are not measurements
    assert MEASURED.findall(prose) == [], (
        f"{document.name}: prose quotes measured numbers; point at a generated block instead")


def test_generated_blocks_are_the_commands_they_name():
    found = [block for document in DOCUMENTS for block in generate.blocks(document)]
    assert any(block.picture for block in found) and any(not block.picture for block in found)
    for block in found:
        if block.picture:
            target = generate.picture_target(block)
            assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{target} is not the PNG `{block.command}` writes"
        else:
            assert _documented_output(block).strip(), f"{block.document.name}: `{block.command}` shows no output"


def test_the_shape_sees_a_changed_column_and_a_lost_row():
    output = " device  gaps  idle_ms  main_cause\n      0     8   21.163  host: tokenize\n" \
             "      1     3   71.626  unrecorded\n"
    assert _shape(output) == _shape(output.replace("21.163", "1.5").replace("8", "12"))
    assert _shape(output) != _shape(output.replace("idle_ms", "idle_s"))
    assert _shape("FAIL a = 1\ncheck: 1 of 2 rules broken\n") != _shape("check: 0 of 2 rules broken\n")


def test_every_generated_command_still_runs_with_the_same_shape(tmp_path):
    # One scratch directory for all, in document order: the `run` blocks make the runs later blocks read.
    for document in DOCUMENTS:
        for block in generate.blocks(document):
            output = generate.run_command(block.command, tmp_path)
            if block.picture:
                png = tmp_path / generate.picture_output(block.command)
                assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"`{block.command}` wrote no PNG"
            else:
                assert _shape(output) == _shape(_documented_output(block)), (
                    f"{document.name}: `{block.command}` now prints output of another shape; run `make docs`\n"
                    f"now:\n{output}")


def test_ci_runs_the_readme_test_command_exactly():
    """CI must fail where a user's fresh machine would: .ci/run runs README's own test command, verbatim."""
    readme = (ROOT / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    test_command = [c for c in commands if "pytest" in c]
    assert len(test_command) == 1, commands
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert test_command[0] in ci, ci


def test_no_merge_conflict_marker_is_left_in_a_tracked_text_file():
    """A merge that stopped half way once left `<<<<<<<` blocks in README and docs/architecture.md."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    marked = []
    for name in files:
        if not name.endswith((".md", ".py", ".sql", ".toml", ".c", ".proto", ".txt", ".cfg")) and name != ".ci/run":
            continue
        text = (ROOT / name).read_text(errors="replace")
        marked += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1)
                   if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "======="]
    assert not marked, marked

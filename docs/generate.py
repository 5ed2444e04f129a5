"""`make docs`: rewrite every example output in README.md and docs/*.md from a real run, so none can drift.

An example output is a generated block: a marker naming the command, the block, an end marker:

    <!-- generated: rbln-perfetto report idle small -->
    ```console
    $ rbln-perfetto report idle small
    (what the command printed)
    ```
    <!-- end generated -->

A picture is the same with `generated picture:`; its command writes a PNG (`-o NAME.png`) and the
block's image link says where the PNG goes (relative to the document):

    <!-- generated picture: rbln-perfetto plot profile-out/aggregate.pb -o timeline.png -->
    ![a profiled run, per device](docs/timeline.png)
    <!-- end generated -->

Every command runs for real, `python -m rbln_perfetto.cli` with OMP_NUM_THREADS=1, in one scratch
directory, in document order (README.md first, then docs/*.md by name): the `run` blocks profile
the runs that later blocks read. A command may end with `; echo $?` to show its exit status (and its stderr, where a failing
command says why).
Only the block between the markers is rewritten; prose around it is left as written, and should
quote no number that the block does not show (tests/test_docs.py checks the blocks' shape in CI).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"<!-- generated(?P<picture> picture)?: (?P<command>.+?) -->\n(?P<body>.*?)<!-- end generated -->",
                   re.S)
IMAGE_LINK = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<target>[^)]+)\)")
ECHO_STATUS = "; echo $?"


@dataclass
class Block:
    document: Path
    command: str
    body: str
    picture: bool
    span: tuple[int, int]  # of the body, in the document's text


def documents(root: Path = ROOT) -> list[Path]:
    """The documents whose blocks are generated, in the order their commands run."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(document: Path) -> list[Block]:
    text = document.read_text()
    return [Block(document, m["command"], m["body"], bool(m["picture"]), m.span("body"))
            for m in BLOCK.finditer(text)]


def run_command(command: str, workdir: Path) -> str:
    """What `command` prints, run for real in `workdir`: its stdout; with `; echo $?` (a command shown
    failing) its stderr too, and its exit status."""
    echo_status = command.endswith(ECHO_STATUS)
    argv = shlex.split(command.removesuffix(ECHO_STATUS))
    if argv[0] != "rbln-perfetto":
        raise ValueError(f"a generated block runs rbln-perfetto commands only, not {argv[0]!r}: {command}")
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", "rbln_perfetto.cli", *argv[1:]], cwd=workdir, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0 and not echo_status:
        raise RuntimeError(f"`{command}` exited {done.returncode}:\n{done.stderr}")
    # The model cache sits under the home directory: shown as ~ so the text is the same for everyone.
    printed = done.stdout + done.stderr if echo_status else done.stdout
    lines = [line.rstrip().replace(str(Path.home()), "~") for line in printed.splitlines()]
    if echo_status:
        lines.append(str(done.returncode))
    return "\n".join(lines) + "\n"


def console_block(command: str, output: str) -> str:
    return f"```console\n$ {command}\n{output}```\n"


def picture_target(block: Block) -> Path:
    link = IMAGE_LINK.search(block.body)
    if link is None:
        raise ValueError(f"{block.document.name}: the picture block of `{block.command}` holds no image link")
    return block.document.parent / link["target"]


def picture_output(command: str) -> str:
    argv = shlex.split(command)
    for flag in ("-o", "--out"):
        if flag in argv:
            return argv[argv.index(flag) + 1]
    raise ValueError(f"a picture's command must name its PNG with -o: {command}")


def generate(root: Path = ROOT) -> None:
    with tempfile.TemporaryDirectory(prefix="rbln-docs-") as scratch:
        workdir = Path(scratch)
        for document in documents(root):
            text = document.read_text()
            found = blocks(document)
            outputs = []
            for block in found:
                print(f"{document.relative_to(root)}: {block.command}", file=sys.stderr)
                output = run_command(block.command, workdir)
                if block.picture:
                    shutil.copyfile(workdir / picture_output(block.command), picture_target(block))
                    outputs.append(block.body)
                else:
                    outputs.append(console_block(block.command, output))
            # Rewritten from the end so that the earlier blocks' spans stay valid.
            for block, body in reversed(list(zip(found, outputs))):
                start, end = block.span
                text = text[:start] + body + text[end:]
            document.write_text(text)


if __name__ == "__main__":
    generate()

"""Progress: a bar on a terminal for long exports and loads, and no progress text anywhere else."""

import fcntl
import io
import os
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest
from golden_export import CAPTURE

from rbln_perfetto import export, progress
from rbln_perfetto.cli import main


@pytest.fixture
def terminal():
    """A pseudo-terminal: the file object a program writes to (a real tty), and a function returning
    what has arrived on the other side so far (waiting up to `wait_s` for `expect` to show up)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size: 100 columns
    stream = os.fdopen(slave, "w", buffering=1)
    received = bytearray()

    def read(expect: str = "", wait_s: float = 30.0) -> str:
        deadline = time.monotonic() + wait_s
        while True:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                received.extend(os.read(master, 1 << 16))
                continue
            text = received.decode(errors="replace")
            if expect in text or time.monotonic() > deadline:
                return text

    yield stream, read
    stream.close()
    os.close(master)


def test_the_tty_decision(terminal, tmp_path):
    tty, _ = terminal
    assert progress.shows_progress(tty)
    r, w = os.pipe()
    with os.fdopen(r, "rb") as pipe_in, os.fdopen(w, "w") as pipe_out:
        assert not progress.shows_progress(pipe_out)
    with open(tmp_path / "log.txt", "w") as file:
        assert not progress.shows_progress(file)
    assert not progress.shows_progress(io.StringIO())
    closed = open(tmp_path / "closed.txt", "w")
    closed.close()
    assert not progress.shows_progress(closed)
    assert not progress.shows_progress(None) and not progress.shows_progress(object())


def _exported(out: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(out.iterdir()) if f.suffix == ".pb"}


def test_export_draws_a_bar_on_a_terminal_and_nothing_elsewhere(terminal, tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(progress, "DELAY_S", 0)  # draw at once: the golden capture exports in well under a second
    tty, read = terminal
    export(CAPTURE, tmp_path / "piped")
    err = capfd.readouterr().err  # stderr is pytest's capture here, not a terminal: no progress text at all
    assert "exporting" not in err and "%|" not in err

    monkeypatch.setattr(sys, "stderr", tty)
    export(CAPTURE, tmp_path / "on-a-terminal")
    shown = read("exporting capture.rblncap")
    assert "exporting capture.rblncap" in shown and "%" in shown
    # The bar changes nothing that is written.
    assert _exported(tmp_path / "piped") == _exported(tmp_path / "on-a-terminal")


def test_progress_bar_on_a_pipe_is_a_no_op():
    r, w = os.pipe()
    with os.fdopen(r, "rb") as pipe_in, os.fdopen(w, "w") as pipe_out:
        bar = progress.progress_bar(100, "work", stream=pipe_out)
        bar.update(50)
        bar.close()
        pipe_out.flush()
        os.set_blocking(pipe_in.fileno(), False)
        assert pipe_in.read() is None  # nothing was written


def test_an_uncounted_load_shows_its_elapsed_time_on_a_terminal(terminal, monkeypatch):
    monkeypatch.setattr(progress, "DELAY_S", 0)
    tty, read = terminal
    with progress.activity("loading big.pb", stream=tty):
        shown = read("loading big.pb")  # the block lasts until the line has been drawn
    assert "loading big.pb: 00:0" in shown


def test_cli_loads_print_no_progress_when_not_on_a_terminal(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(progress, "DELAY_S", 0)
    result = export(CAPTURE, tmp_path, per_invocation=False)
    assert main(["query", str(result.aggregate_file), "select count(*) as n from slice", "--backend", "sqlite"]) == 0
    out, err = capfd.readouterr()
    assert "loading" not in err and "00:0" not in err and "loading" not in out

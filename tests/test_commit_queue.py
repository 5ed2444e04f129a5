"""Trace files committed in order while their syncs overlap: the committed files are always a prefix."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from rbln_perfetto.errors import ExportError
from rbln_perfetto.exporter.trace_file import CommitQueue, TraceFile


def _written(path, data: bytes) -> TraceFile:
    f = TraceFile(path)
    f.write(data)
    return f


def test_files_are_renamed_in_order_with_a_bounded_number_open(tmp_path):
    names = [f"{i:04d}_transformer_{i}.pb" for i in range(40)]
    with ThreadPoolExecutor(4) as pool:
        queue = CommitQueue(pool, max_pending=3)
        committed = []
        for i, name in enumerate(names):
            queue.put(_written(tmp_path / name, bytes([i]) * 1000))
            committed += queue.commit_ready()
            assert len(names[: i + 1]) - len(committed) <= 3
        committed += queue.commit_ready(wait_all=True)
    assert [p.name for p in committed] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporaries left
    assert all((tmp_path / n).read_bytes() == bytes([i]) * 1000 for i, n in enumerate(names))


def test_a_file_that_cannot_be_committed_stops_the_ones_after_it(tmp_path):
    names = [f"{i:04d}_vae_0.pb" for i in range(6)]
    (tmp_path / names[3]).mkdir()  # in the way of the fourth file's rename
    with ThreadPoolExecutor(4) as pool:
        queue = CommitQueue(pool)
        for name in names:
            queue.put(_written(tmp_path / name, b"trace"))
        with pytest.raises(ExportError, match=f"writing {names[3]} in .*Is a directory"):
            queue.commit_ready(wait_all=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == names[:3]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_discard_removes_what_is_not_committed(tmp_path):
    with ThreadPoolExecutor(2) as pool:
        queue = CommitQueue(pool)
        for i in range(5):
            queue.put(_written(tmp_path / f"{i:04d}_vae_0.pb", b"trace"))
        queue.discard()
        assert queue.commit_ready(wait_all=True) == []
    assert list(tmp_path.iterdir()) == []

"""Run-folder files are replaced whole or not at all."""
from __future__ import annotations

import errno

import pytest

from recipecli.train import atomic, runfolder


def test_a_write_replaces_the_file_whole(tmp_path):
    (tmp_path / "run.yaml").write_text("old\n")
    atomic.write(tmp_path / "run.yaml", "new\n")
    assert (tmp_path / "run.yaml").read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    """Found in review: run.yaml was rewritten in place after training, so a full disk truncated it."""
    runfolder.write_run(tmp_path, {"started": "then"})
    before = (tmp_path / runfolder.RUN).read_bytes()

    class Full(str):  # text whose encoding fails as a full disk would fail the write
        def encode(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic.write(tmp_path / runfolder.RUN, Full("x"))
    assert (tmp_path / runfolder.RUN).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [runfolder.RUN]


def test_a_failed_rename_removes_the_written_temporary(tmp_path, monkeypatch):
    runfolder.write_run(tmp_path, {"started": "then"})
    before = (tmp_path / runfolder.RUN).read_bytes()

    def failing_replace(src, dst):  # the data is on disk; the rename is what fails (EIO)
        assert (tmp_path / src).read_bytes() == b"new"
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic.write(tmp_path / runfolder.RUN, b"new")
    assert (tmp_path / runfolder.RUN).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [runfolder.RUN]

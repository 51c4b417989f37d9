"""stylecap.utils atomic writes survive a power loss, not only a kill (issue 22 section 7).

A rename is atomic for readers, but without fsync the new file's data (and the rename itself) may still sit in
the page cache when the power goes: after a reboot the path can hold an empty or truncated file. So the
temporary file is fsynced before ``os.replace``, and its directory after it (the rename is an entry of the
directory). The test records every fsync and replace, in order, with what each fsync's descriptor was.
"""
from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from stylecap import utils


@pytest.fixture
def events(monkeypatch):
    log: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        log.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst, *a, **k):
        log.append(("replace", os.stat(src).st_ino, str(dst)))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


@pytest.mark.parametrize("writer", ["text", "json", "torch"])
def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, events, writer):
    path = tmp_path / "sub" / f"out.{writer}"
    {"text": lambda: utils.atomic_write_text(path, "hello\n"),
     "json": lambda: utils.atomic_write_json(path, {"a": 1}),
     "torch": lambda: utils.atomic_torch_save({"w": torch.arange(3)}, path)}[writer]()
    kinds = [e[0] if e[0] == "replace" else f"fsync {e[1]}" for e in events]
    assert kinds == ["fsync file", "replace", "fsync dir"], events
    tmp_inode = events[1][1]
    assert events[0][2] == tmp_inode  # the fsynced file is the one renamed onto the path
    assert events[1][2] == str(path)
    assert events[2][2] == os.stat(path.parent).st_ino  # the directory that holds the new entry
    assert os.stat(path).st_ino == tmp_inode
    if writer == "json":
        assert json.loads(path.read_text()) == {"a": 1}


def test_atomic_write_keeps_the_usual_permissions_and_leaves_no_temporary_file(tmp_path):
    umask = os.umask(0o022)
    try:
        utils.atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_write_leaves_neither_the_path_nor_a_temporary_file(tmp_path, events):
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        utils.atomic_write(tmp_path / "b.txt", write)
    assert list(tmp_path.iterdir()) == [] and not any(e[0] == "replace" for e in events)

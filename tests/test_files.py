"""worldkit.files: atomic writes of text and bytes, synced, through a temporary name beside the target."""
import os

import pytest

from worldkit import files


def test_text_and_bytes_replace_the_file_whole_and_leave_nothing_beside_it(tmp_path):
    target = tmp_path / "results.md"
    target.write_text("old")
    assert files.atomic_write(target, "new ⚑\n") == target
    assert target.read_text() == "new ⚑\n"
    assert files.atomic_write(str(tmp_path / "b.bin"), b"\x00\xff") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "results.md"]


def test_the_file_is_synced_before_it_is_moved_from_a_temporary_name_in_the_same_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", src, dst)), real_replace(src, dst))[1])
    files.atomic_write(tmp_path / "config.yaml", "a: 1\n")
    assert events[0] == "fsync" and events[1][0] == "replace" and len(events) == 2
    _, src, dst = events[1]
    assert src.parent == tmp_path and src.name.startswith(".config.yaml.tmp-") and dst == tmp_path / "config.yaml"


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="broke"):
        with files.atomic_file(target, "wb") as f:
            f.write(b"half")
            raise RuntimeError("broke")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target, suffix=".png") as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".png"
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_writer_that_wants_a_file_name_gets_one_and_only_new_files_are_opened(tmp_path):
    with files.atomic_path(tmp_path / "w.pt") as tmp:
        assert not tmp.exists() and not tmp.name.endswith(".pt")  # a leftover never matches *.pt
        tmp.write_bytes(b"weights")
    assert (tmp_path / "w.pt").read_bytes() == b"weights"
    with pytest.raises(ValueError, match="mode"):
        with files.atomic_file(tmp_path / "x", "a"):
            pass
    with pytest.raises(FileNotFoundError):
        files.atomic_write(tmp_path / "no" / "such" / "folder.txt", "x")

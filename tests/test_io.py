"""Atomic writes leave either the old file or the new one, never a partial file, with normal permissions."""

import os

import pytest

from saesteer.io import atomic_path, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_uses_umask_permissions(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.json"]


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_a_writer_that_replaces_the_temporary_file_still_gets_umask_permissions(tmp_path, mask):
    """safetensors writes its own file (mode 0600): the finished file must follow the umask anyway."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(mask)
    try:
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask

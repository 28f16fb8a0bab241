"""Replacing a folder and finding what killed writers left: the rules export and finetune share."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import edgeqa.atomic as atomic
from edgeqa.atomic import replace_folder, set_aside


def folder_with(path, text):
    path.mkdir()
    (path / "file.txt").write_text(text)
    return path


@pytest.mark.parametrize("swap", [True, False], ids=["one step", "moved aside first"])
def test_replace_folder_puts_the_new_one_in_place_and_leaves_nothing_else(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(atomic, "_swap", lambda first, second: False)
    target = folder_with(tmp_path / "target", "old")
    folder_with(set_aside(target), "what a kill between the two moves left")
    replace_folder(folder_with(tmp_path / "new", "new"), target)
    assert (target / "file.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["target"]
    replace_folder(folder_with(tmp_path / "first", "first"), tmp_path / "absent")
    assert (tmp_path / "absent" / "file.txt").read_text() == "first"


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_on_linux_the_two_folders_are_swapped(tmp_path):
    first, second = folder_with(tmp_path / "a", "a"), folder_with(tmp_path / "b", "b")
    assert atomic._swap(first, second)
    assert (first / "file.txt").read_text() == "b" and (second / "file.txt").read_text() == "a"


def ended_pid() -> int:
    """The id of a process that has ended (and, on a machine this quiet, not yet been given to another)."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(ended.stdout)


def test_leftovers_are_only_those_of_processes_on_this_machine_that_ended(tmp_path):
    dead, host = ended_pid(), atomic._host()
    names = {
        f".out.partial-{dead}@{host}-x1": True,  # a killed export's
        f".out.partial-{os.getpid()}@{host}-x2": False,  # a running one's
        f".out.partial-{dead}@another.machine-x3": False,  # another container's, on a shared disk
        f".notes.partial-{dead}@{host}-x4": False,  # another output's
        f".out.partial-99999999999999999999@{host}-x5": True,  # no process can have that id
        ".out.partial-2024-01": False,  # a user's
        "out": False,
    }
    for name in names:
        (tmp_path / name).mkdir()
    assert atomic.owned_prefix(".out.partial").startswith(f".out.partial-{os.getpid()}@{host}-")
    found = sorted(p.name for p in atomic.leftovers(tmp_path, ".out.partial"))
    assert found == sorted(name for name, left in names.items() if left)


@pytest.mark.parametrize("swap", [True, False], ids=["one step", "moved aside first"])
def test_a_link_to_a_folder_is_replaced_by_the_folder_and_what_it_pointed_to_is_kept(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(atomic, "_swap", lambda first, second: False)
    pointed = folder_with(tmp_path / "model-v3", "v3")
    current = tmp_path / "current"
    for version in ("v4", "v5"):  # twice: nothing left over from the first stands in the second's way
        current.symlink_to(pointed)
        replace_folder(folder_with(tmp_path / "new", version), current)
        assert not current.is_symlink() and (current / "file.txt").read_text() == version
        assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "model-v3"]
        atomic.remove(current)
    assert (pointed / "file.txt").read_text() == "v3"

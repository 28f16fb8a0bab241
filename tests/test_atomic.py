"""Replacing a folder and finding what killed writers left: the rules export and finetune share."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import edgeqa.atomic as atomic
from edgeqa.atomic import leftovers, replace_folder, set_aside


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


def test_leftovers_are_only_those_of_processes_that_ended(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)
    for name in (f".out.partial-{dead}-x1", f".out.partial-{os.getpid()}-x2", ".out.partial-x3", "out"):
        (tmp_path / name).mkdir()
    found = leftovers(tmp_path, r"\.out\.partial-(?P<pid>\d+)-\w+")
    assert [p.name for p in found] == [f".out.partial-{dead}-x1"]

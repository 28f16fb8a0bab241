"""A program run at a terminal, as a person runs it: a tmux session of its own, its screen read back."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest


class Tmux:
    """`command` in a detached tmux session on a server of its own (gone with `close`), 160 x 40."""

    def __init__(self, name: str, command: str):
        if not shutil.which("tmux"):
            pytest.skip("tmux is needed (apt-get install tmux)")
        self.name = name
        self.socket = ["tmux", "-L", name]
        subprocess.run([*self.socket, "new-session", "-d", "-s", name, "-x", "160", "-y", "40", command], check=True)

    def screen(self) -> str:
        return subprocess.run(
            [*self.socket, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        ).stdout

    def wait_for(self, text: str, seconds: float = 60) -> str:
        """The screen once it shows `text`; an AssertionError with the screen after `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared:\n{self.screen()}")

    def send(self, *keys: str) -> None:
        subprocess.run([*self.socket, "send-keys", "-t", self.name, *keys], check=True)

    def alive(self) -> bool:
        return subprocess.run([*self.socket, "has-session", "-t", self.name], capture_output=True).returncode == 0

    def close(self) -> None:
        subprocess.run([*self.socket, "kill-server"], capture_output=True)

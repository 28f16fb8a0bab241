"""Injected faults: graphs that fail for one prompt, to show that one row's failure stays that row's."""

from __future__ import annotations

from typing import Any


class Poisoned:
    """An artifact's graphs that fail every encoder run or step including a prompt of `length` tokens.

    Args:
        graphs: The model's `T5Graphs`.
        length: The poisoned prompt's length in tokens (make it the only one of that length).
        where: "encode" or "step".
    """

    def __init__(self, graphs: Any, length: int, where: str):
        self.graphs, self.length, self.where = graphs, length, where

    def __getattr__(self, name: str) -> Any:
        return getattr(self.graphs, name)

    def encode(self, input_ids: Any, mask: Any) -> Any:
        if self.where == "encode" and (mask.sum(axis=1) == self.length).any():
            raise RuntimeError("injected encoder failure")
        return self.graphs.encode(input_ids, mask)

    def step(self, state: Any, tokens: Any) -> Any:
        if self.where == "step" and (state.encoder_mask.sum(axis=1) == self.length).any():
            raise RuntimeError("injected step failure")
        return self.graphs.step(state, tokens)

"""An answer's text as its tokens arrive: incremental detokenization, stop strings, the streamed part."""

from __future__ import annotations

from edgeqa.runtime.tokenizer import PromptTokenizer


def stop_at(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in text, or None."""
    found = [text.find(stop) for stop in stops if stop and stop in text]
    return min(found) if found else None


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might begin a stop string, and so cannot be streamed yet."""
    held = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:size]):
                held = size
                break
    return held


class AnswerText:
    """One row's text: what has been streamed, where a stop string ends it, the final text.

    Text is decoded from all the tokens so far at every step (a token's text can depend on its
    neighbours), and only for rows that stream or have stop strings; the others decode once, at
    the end. The streamed text only ever grows: text that might begin a stop string, or that the
    tokenizer's clean-up may still rewrite (" '" before "s" becomes "'s"), is held back until it
    cannot change; should the tokenizer still rewrite text already sent, the answer keeps what was
    sent.
    """

    def __init__(self, tokenizer: PromptTokenizer, stop: tuple[str, ...], stream: bool):
        self.tokenizer = tokenizer
        self.stop = stop
        self.stream = stream
        self.watched = stream or bool(stop)  # decoded at every step
        # text that a stop string, or the tokenizer's clean-up, may still change is not streamed yet
        self.unsettled = stop + tokenizer.rewritten
        self.shown = ""

    def advance(self, tokens: list[int]) -> tuple[str, str | None]:
        """Tokens so far -> (new text to stream, the final text if a stop string has ended the answer)."""
        text = self.tokenizer.decode(tokens)
        cut = stop_at(text, self.stop)
        if cut is not None:
            return "", text[:cut]
        if not self.stream:
            return "", None
        return self._show(text[: len(text) - held_back(text, self.unsettled)]), None

    def finish(self, tokens: list[int], text: str | None = None) -> tuple[str, str, bool]:
        """(the last text to stream, the answer's text, whether a stop string ended it) once generation ends.

        Args:
            text: The final text where `advance` found a stop string (verbatim before it).
        """
        stopped = text is not None
        if text is None:
            text = self.tokenizer.decode(tokens)
            cut = stop_at(text, self.stop)
            stopped = cut is not None
            text = text if cut is None else text[:cut]
        if not self.stream:
            return "", text, stopped
        if not text.startswith(self.shown):
            return "", self.shown, stopped
        return self._show(text), text, stopped

    def _show(self, text: str) -> str:
        if text.startswith(self.shown) and len(text) > len(self.shown):
            delta, self.shown = text[len(self.shown) :], text
            return delta
        return ""

"""Passages: paragraphs split on sentence boundaries and packed up to a token budget, with a small overlap."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

from tokenizers import Tokenizer

from edgeqa.documents.formats import Block, Document
from edgeqa.errors import ConfigError
from edgeqa.prompt import CONTEXT_TEMPLATE, check_context_template

#: Passage size without an artifact to size it from (FLAN-T5 reads 512 tokens: 400 leave room for the rest).
DEFAULT_PASSAGE_TOKENS = 400
#: The smallest budget that still makes passages worth reading.
MIN_PASSAGE_TOKENS = 16
#: Characters tokenized at once per token of budget when a sentence must be cut (prose has about 4 a token).
WINDOW_CHARS_PER_TOKEN = 16

_SENTENCE_END = re.compile(r"[。！？]|[.!?…][\"'”’)\]]*\s+")


@dataclass(frozen=True)
class Piece:
    """A passage before storage: its section heading, source lines and text."""

    heading: str
    start_line: int
    end_line: int
    text: str


@dataclass(frozen=True)
class _Unit:
    text: str
    start: int
    end: int
    tokens: int
    paragraph: int
    block: Block


def count_tokens(tokenizer: Tokenizer, text: str) -> int:
    """Tokens of `text` alone, without the end-of-sequence token."""
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def passage_budget(
    max_input_tokens: int, tokenizer: Tokenizer, template: str = CONTEXT_TEMPLATE, question_tokens: int | None = None
) -> int:
    """Tokens left for a passage once the template, a question and the end token are in the reader's input.

    Args:
        question_tokens: Room kept for the question [a quarter of the input, at most 48].

    Raises:
        ConfigError: the input limit leaves less than `MIN_PASSAGE_TOKENS`.
    """
    check_context_template(template)
    room = question_tokens if question_tokens is not None else min(48, max_input_tokens // 4)
    frame = count_tokens(tokenizer, template.replace("{context}", "").replace("{question}", ""))
    budget = max_input_tokens - frame - room - 1
    if budget < MIN_PASSAGE_TOKENS:
        raise ConfigError(
            f"an input limit of {max_input_tokens} tokens leaves {budget} for a passage (at least "
            f"{MIN_PASSAGE_TOKENS} needed); re-export with a larger max_input_tokens or give --passage-tokens"
        )
    return budget


def check_passage_tokens(budget: int) -> None:
    """Refuse a passage size too small to hold a sentence's worth of tokens.

    Raises:
        ConfigError: naming the size and the smallest allowed.
    """
    if budget < MIN_PASSAGE_TOKENS:
        raise ConfigError(f"passage_tokens is {budget}; give at least {MIN_PASSAGE_TOKENS}")


def default_overlap(passage_tokens: int) -> int:
    """The overlap between neighbouring passages: an eighth of the budget."""
    return passage_tokens // 8


def _sentences(block: Block) -> list[tuple[int, int]]:
    """Character spans of the sentences of a paragraph."""
    spans, start = [], 0
    for match in _SENTENCE_END.finditer(block.text):
        spans.append((start, match.end()))
        start = match.end()
    spans.append((start, len(block.text)))
    return [(a, b) for a, b in spans if block.text[a:b].strip()]


def _fit_span(tokenizer: Tokenizer, block: Block, a: int, b: int, budget: int) -> list[tuple[int, int]]:
    """Spans of at most `budget` tokens covering `block.text[a:b]`: on line breaks first, then on tokens."""
    text = block.text[a:b]
    window = budget * WINDOW_CHARS_PER_TOKEN
    if len(text) <= window and count_tokens(tokenizer, text) <= budget:
        return [(a, b)]
    if "\n" in text.strip():
        out, start = [], a
        for piece in text.split("\n"):
            if piece.strip():
                out.extend(_fit_span(tokenizer, block, start, start + len(piece), budget))
            start += len(piece) + 1
        return out
    if len(text) > window:  # tokenized whole, a long line takes hundreds of bytes a character
        return [span for x, y in _windows(text, a, window) for span in _fit_span(tokenizer, block, x, y, budget)]
    offsets = [o for o in tokenizer.encode(text, add_special_tokens=False).offsets if o[1] > o[0]]
    out, size = [], budget
    first = 0
    while first < len(offsets):
        last = min(first + size, len(offsets))
        span = (a + offsets[first][0], a + offsets[last - 1][1])
        if count_tokens(tokenizer, block.text[span[0] : span[1]]) > budget and size > 1:
            size -= max(1, size // 8)  # re-encoding a cut can differ at its edges
            continue
        out.append(span)
        first, size = last, budget
    return out


def _windows(text: str, offset: int, size: int) -> list[tuple[int, int]]:
    """Spans of at most `size` characters covering `text` (which starts at `offset`), cut after a space
    in the second half of each where there is one."""
    spans, start, end = [], 0, len(text)
    while end - start > size:
        space = text.rfind(" ", start + size // 2, start + size)
        cut = space + 1 if space >= 0 else start + size
        spans.append((offset + start, offset + cut))
        start = cut
    spans.append((offset + start, offset + end))
    return spans


def _counts(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    """Token counts of many texts in one call (the tokenizer spreads them over the cores)."""
    if not texts:
        return []
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # no offsets: faster
    return [len(e.ids) for e in encode(texts, add_special_tokens=False)]


def _units(tokenizer: Tokenizer, blocks: list[Block], budget: int) -> list[_Unit]:
    """The sentences of all blocks with their token counts; a sentence over the budget is cut."""
    spans = []
    for paragraph, block in enumerate(blocks):
        for a, b in _sentences(block):
            for x, y in _fit_span(tokenizer, block, a, b, budget) if b - a > budget * 8 else [(a, b)]:
                spans.append((block, paragraph, x, y))
    texts = [" ".join(block.text[a:b].split()) for block, _, a, b in spans]
    units = []
    for (block, paragraph, a, b), text, tokens in zip(spans, texts, _counts(tokenizer, texts), strict=True):
        if not text:
            continue
        if tokens > budget:  # a long sentence: cut it on line breaks, else on tokens
            for x, y in _fit_span(tokenizer, block, a, b, budget):
                piece = " ".join(block.text[x:y].split())
                if piece:
                    count = count_tokens(tokenizer, piece)
                    units.append(_Unit(piece, block.line_at(x), block.line_at(y - 1), count, paragraph, block))
            continue
        units.append(_Unit(text, block.line_at(a), block.line_at(max(a, b - 1)), tokens, paragraph, block))
    return units


def _join(units: list[_Unit]) -> str:
    parts: list[str] = []
    for index, unit in enumerate(units):
        if index:
            parts.append("\n" if unit.paragraph != units[index - 1].paragraph else " ")
        parts.append(unit.text)
    return "".join(parts)


def _pack(tokenizer: Tokenizer, units: list[_Unit], budget: int, overlap: int, exact: bool) -> list[list[_Unit]]:
    """Greedy packing by the sentences' token counts; with `exact`, each passage is also counted as joined
    (a tokenizer may count a joined text differently). Each passage opens with the last sentences of the one
    before (up to `overlap` tokens), never with all of it."""
    pending = deque(units)
    out: list[list[_Unit]] = []
    current: list[_Unit] = []
    carried = 0  # units of `current` repeated from the passage before
    while pending:
        while pending and (not current or sum(u.tokens for u in current) + pending[0].tokens <= budget):
            current.append(pending.popleft())
        while exact and len(current) > 1 and count_tokens(tokenizer, _join(current)) > budget:
            if len(current) - 1 > carried:
                pending.appendleft(current.pop())
            else:  # the repeated sentences leave no room for a new one: drop them
                current, carried = current[carried:], 0
        out.append(current)
        tail: list[_Unit] = []
        for unit in reversed(current[1:]):
            if sum(u.tokens for u in tail) + unit.tokens > overlap:
                break
            tail.insert(0, unit)
        if pending and tail and sum(u.tokens for u in tail) + pending[0].tokens > budget:
            tail = []
        current, carried = (tail, len(tail)) if pending else ([], 0)
    return out


def split_document(document: Document, tokenizer: Tokenizer, budget: int, overlap: int) -> list[Piece]:
    """The passages of a document, in order; none crosses a section, none has more than `budget` tokens."""
    check_passage_tokens(budget)
    sections: list[list[_Unit]] = []
    for unit in _units(tokenizer, document.blocks, budget):
        if sections and sections[-1][0].block.section == unit.block.section:
            sections[-1].append(unit)
        else:
            sections.append([unit])
    groups = [_pack(tokenizer, units, budget, overlap, exact=False) for units in sections]
    texts = [_join(group) for packed in groups for group in packed]
    counts = iter(_counts(tokenizer, texts))  # all passages checked in one call; a miscounted section is redone
    for number, packed in enumerate(groups):
        if any([next(counts) > budget for _ in packed]):
            groups[number] = _pack(tokenizer, sections[number], budget, overlap, exact=True)
    return [
        Piece(group[0].block.heading, min(u.start for u in group), max(u.end for u in group), _join(group))
        for packed in groups
        for group in packed
    ]

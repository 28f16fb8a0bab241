"""Text out of each supported format, as paragraphs that remember their section and source lines (stdlib only;
PDF through the optional `pypdf`)."""

from __future__ import annotations

import bisect
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from edgeqa.errors import MissingExtraError
from edgeqa.records import source_lines

#: File suffixes read as each format; anything else is skipped and counted.
FORMATS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".jsonl": "jsonl",
    ".pdf": "pdf",
}


@dataclass
class Block:
    """One paragraph: its text, the source line at each offset where a line starts, and its section.

    Attributes:
        text: The paragraph as written (line breaks kept, so offsets map to lines).
        starts: Ascending `(offset, line)` pairs: the text from `offset` on lies on `line` (1-based).
        heading: The heading of the section the paragraph is in ("" before the first heading).
        section: A number that changes where a passage must not run on (a heading, a JSONL record).
    """

    text: str
    starts: list[tuple[int, int]]
    heading: str = ""
    section: int = 0

    def line_at(self, offset: int) -> int:
        index = bisect.bisect_right(self.starts, (offset, 1 << 62)) - 1
        return self.starts[max(index, 0)][1]


@dataclass
class Document:
    """What a file says: its title, its paragraphs, problems worth reporting, and what its line numbers count."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unit: str = "line"  # "page" for PDF, whose text has no stable lines


def block_from_lines(lines: list[tuple[int, str]], heading: str, section: int) -> Block:
    """A paragraph from `(line number, text)` pairs."""
    starts, offset = [], 0
    for number, text in lines:
        starts.append((offset, number))
        offset += len(text) + 1
    return Block("\n".join(text for _, text in lines), starts, heading, section)


def _paragraphs(lines: list[tuple[int, str]], heading: str, section: int) -> list[Block]:
    blocks, current = [], []
    for number, text in lines + [(0, "")]:
        if text.strip():
            current.append((number, text))
        elif current:
            blocks.append(block_from_lines(current, heading, section))
            current = []
    return blocks


def parse_text(text: str, title: str) -> Document:
    """Plain text: paragraphs are separated by blank lines."""
    return Document(title, _paragraphs(list(enumerate(source_lines(text), 1)), "", 0))


_ATX = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")  # a closing run of # follows a space: "# C#" is C#
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def parse_markdown(text: str, title: str) -> Document:
    """Markdown: `#` and underlined headings open sections (not inside code fences); the first level-1
    heading is the title."""
    blocks: list[Block] = []
    heading, section, fence, first_h1 = "", 0, "", ""
    pending: list[tuple[int, str]] = []

    def flush() -> None:
        blocks.extend(_paragraphs(pending, heading, section))
        pending.clear()

    for number, line in enumerate(source_lines(text), 1):
        fenced = _FENCE.match(line)
        if fence or fenced:
            if fenced and (not fence or fenced.group(1) == fence):
                fence = "" if fence else fenced.group(1)
            pending.append((number, line))
            continue
        atx = _ATX.match(line)
        setext = _SETEXT.match(line) if len(pending) >= 1 and pending[-1][1].strip() else None
        if setext and (len(pending) == 1 or not pending[-2][1].strip()):
            name, level = pending.pop()[1].strip(), 1 if setext.group(1)[0] == "=" else 2
        elif atx:
            name, level = atx.group(2), len(atx.group(1))
        else:
            pending.append((number, line))
            continue
        flush()
        heading, section = name, section + 1
        if level == 1 and not first_h1:
            first_h1 = name
    flush()
    return Document(first_h1 or title, blocks)


class _HTMLText(HTMLParser):
    """Collects visible text by block element, with source lines; skips script, style and the like."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg"})  # not head, whose end tag may be left out
    BREAKS = frozenset(
        "p div br li ul ol tr td th table section article header footer nav aside main blockquote pre "
        "dt dd dl figure figcaption form hr".split()
    )
    HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title = ""
        self.first_h1 = ""
        self.heading = ""
        self.section = 0
        self._skip = 0
        self._in_title = False
        self._in_heading = ""
        self._heading_text: list[str] = []
        self._text: list[str] = []
        self._starts: list[tuple[int, int]] = []
        self._length = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif self._skip:  # an <svg>'s <title> is a tooltip, not the page's
            return
        elif tag == "title":
            self._in_title = True
        elif tag in self.HEADINGS:
            self._flush()
            self._in_heading, self._heading_text = tag, []
        elif tag in self.BREAKS:
            self._flush()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BREAKS:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(self._skip - 1, 0)
        elif self._skip:
            return
        elif tag == "title":
            self._in_title = False
        elif tag == self._in_heading:
            name = " ".join("".join(self._heading_text).split())
            self._in_heading = ""
            if tag in ("h1", "h2", "h3") and name:
                self.heading, self.section = name, self.section + 1
                self.first_h1 = self.first_h1 or (name if tag == "h1" else "")
            elif name:  # a minor heading stays in the text, as its own paragraph
                self._add(name)
                self._flush()
        elif tag in self.BREAKS:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        elif self._in_title:
            self.title += data
        elif self._in_heading:
            self._heading_text.append(data)
        else:
            self._add(data)

    def _add(self, data: str) -> None:
        line = self.getpos()[0]
        self._starts.append((self._length, line))
        for index, char in enumerate(data):
            if char == "\n":
                line += 1
                self._starts.append((self._length + index + 1, line))
        self._text.append(data)
        self._length += len(data)

    def _flush(self) -> None:
        text = "".join(self._text)
        if text.strip():
            self.blocks.append(Block(text, self._starts, self.heading, self.section))
        self._text, self._starts, self._length = [], [], 0


def parse_html(text: str, title: str) -> Document:
    """HTML: visible text only; `<title>` (else the first `<h1>`) is the title, `<h1>`-`<h3>` open sections."""
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    parser._flush()
    blocks = [b for block in parser.blocks for b in _split_blank_lines(block)]
    return Document(" ".join(parser.title.split()) or parser.first_h1 or title, blocks)


def _split_blank_lines(block: Block) -> list[Block]:
    """Text in one HTML element with blank lines in it (a `<pre>`, a bare body) holds several paragraphs."""
    if "\n\n" not in block.text and "\n \n" not in block.text:
        return [block]
    lines, offset = [], 0
    for piece in block.text.split("\n"):
        lines.append((block.line_at(offset), piece))
        offset += len(piece) + 1
    return _paragraphs(lines, block.heading, block.section)


def parse_jsonl(text: str, title: str) -> Document:
    """JSON lines: each record's `text` is a section of its own, titled by its `title` (else its `id`).
    Bad lines are reported once per kind, with the first line numbers."""
    document = Document(title)
    not_json: list[int] = []
    no_text: list[int] = []
    fields: list[str] = []
    for number, line in enumerate(source_lines(text), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            not_json.append(number)
            continue
        body = record.get("text") if isinstance(record, dict) else None
        if not isinstance(body, str):
            no_text.append(number)
            fields = fields or ([str(key) for key in record][:8] if isinstance(record, dict) else [])
            continue
        name = record.get("title") or record.get("id") or ""
        lines = [(number, piece) for piece in source_lines(body)]
        document.blocks.extend(_paragraphs(lines, str(name), number))
    if not_json:
        document.warnings.append(f"{_lines(not_json)}: not JSON; skipped")
    if no_text:
        seen = f" (fields: {', '.join(fields)})" if fields and not document.blocks else ""
        document.warnings.append(f'{_lines(no_text)}: no "text" string{seen}; skipped')
    return document


def _lines(numbers: list[int], unit: str = "line") -> str:
    """`line 3`, `lines 3, 5`, `lines 3, 5, 8 and 97 more` (or pages)."""
    if len(numbers) == 1:
        return f"{unit} {numbers[0]}"
    more = f" and {len(numbers) - 3} more" if len(numbers) > 3 else ""
    return f"{unit}s {', '.join(map(str, numbers[:3]))}{more}"


def parse_pdf(data: bytes, title: str) -> Document:
    """PDF through pypdf: each page's text; line numbers count pages."""
    try:
        from pypdf import PdfReader
    except ModuleNotFoundError as e:
        raise MissingExtraError("reading PDF needs pypdf, which is not installed: pip install 'edgeqa[pdf]'") from e
    reader = PdfReader(io.BytesIO(data))
    meta_title = ""
    try:
        metadata = reader.metadata
        meta_title = str(metadata.get("/Title") or "") if metadata is not None else ""
    except Exception:  # noqa: BLE001 - a broken info dictionary only costs the title
        meta_title = ""
    document = Document(meta_title.strip() or title, unit="page")
    unreadable = []
    for number, page in enumerate(reader.pages, 1):
        try:
            text = page.extract_text() or ""
        except Exception:  # noqa: BLE001 - one damaged page costs that page, not the file
            unreadable.append(number)
            continue
        lines = [(number, piece) for piece in source_lines(text)]
        document.blocks.extend(_paragraphs(lines, "", 0) or [])
    if unreadable:
        document.warnings.append(f"{_lines(unreadable, 'page')}: no text could be extracted; skipped")
    return document


TextParser = Callable[[str, str], Document]
TEXT_PARSERS: dict[str, TextParser] = {
    "text": parse_text,
    "markdown": parse_markdown,
    "html": parse_html,
    "jsonl": parse_jsonl,
}


def kind_of(path: Path) -> str | None:
    """The format a file is read as, from its suffix; None for an unsupported file."""
    return FORMATS.get(path.suffix.lower())

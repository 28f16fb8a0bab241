"""edgeqa.documents: files to passages to a SQLite FTS5 index, updates, bad input, crashes, and search."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import another_tokenizer
from edgeqa.cli import app
from edgeqa.documents import Index, build_index, fts_query, load_tokenizer, passage_budget, store
from edgeqa.documents.files import Skip, SourceFile, read_document
from edgeqa.documents.formats import FORMATS
from edgeqa.documents.query import narrow_query
from edgeqa.documents.sizing import bundled_tokenizer, resolve_sizing
from edgeqa.documents.split import count_tokens, split_document
from edgeqa.errors import ConfigError, DataError, InputError

TOKENIZER = bundled_tokenizer()


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer(TOKENIZER)


def sentences(topic: str, count: int) -> str:
    """Distinct, realistic sentences about a topic."""
    return " ".join(
        f"The {topic} report number {n} says that shipment {n * 7} left the harbour on day {n % 28 + 1}."
        for n in range(count)
    )


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def corpus(folder: Path, files: int = 3) -> Path:
    for n in range(files):
        write(
            folder / f"doc{n}.md",
            f"# Document {n}\n\n{sentences(f'topic{n}', 20)}\n\n## Details\n\nzebra{n} lives here.\n",
        )
    return folder


def make_pdf(pages: list[list[str]], title: str = "") -> bytes:
    """A minimal PDF whose pages hold the given lines (Helvetica, one text object a page)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>"]
    kids = " ".join(f"{5 + 2 * i} 0 R" for i in range(len(pages)))
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>")
    objects.append("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title ({title}) >>")
    for i, lines in enumerate(pages):
        stream = "BT /F1 12 Tf 14 TL 72 720 Td " + " T* ".join(f"({line}) Tj" for line in lines) + " ET"
        objects.append(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {6 + 2 * i} 0 R >>"
        )
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 4 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def passages_of(index_path: Path) -> list[tuple[str, str]]:
    connection = sqlite3.connect(index_path)  # closed at once: an open one would keep the index's log
    try:
        rows = connection.execute(
            "SELECT f.shown, p.text FROM passages p JOIN files f ON f.id = p.file_id ORDER BY 1, 2"
        )
        return rows.fetchall()
    finally:
        connection.close()


# ---------------------------------------------------------------- formats


def test_each_format_is_read_with_its_title_headings_and_lines(tmp_path):
    write(tmp_path / "notes.txt", "First paragraph\nspans two lines.\n\nSecond paragraph.\n")
    write(
        tmp_path / "guide.md",
        "# Guide\n\nIntro text.\n\n## Install\n\n```\n# not a heading\n```\n\nRun pip.\n\nSetup\n-----\n\nSet it up.\n",
    )
    write(
        tmp_path / "page.html",
        "<html><head><title>Page title</title><style>p{color:red}</style></head>\n<body>\n<h1>Top</h1>\n"
        "<p>Visible &amp; kept\ntext.</p>\n<script>var hidden = 'script text';</script>\n<h2>Part two</h2>\n"
        "<p>More walrus text.</p></body></html>\n",
    )
    write(
        tmp_path / "records.jsonl", '{"text": "Record one.", "title": "One"}\n\n{"text": "Record two.", "id": "r2"}\n'
    )
    index = tmp_path / "index.db"
    summary = build_index([tmp_path], index, TOKENIZER, passage_tokens=64)
    assert summary.files == 4 and not summary.skipped and not summary.warnings
    with Index.open(index) as ix:
        (hit,) = ix.search("first paragraph spans")
        assert (hit.file, hit.title, hit.heading, hit.start_line, hit.end_line) == (
            str(tmp_path / "notes.txt"),
            "notes",
            "",
            1,
            4,
        )
        assert hit.text == "First paragraph spans two lines.\nSecond paragraph."
        hit = ix.search("run pip")[0]
        assert (hit.title, hit.heading, hit.start_line, hit.end_line) == ("Guide", "Install", 7, 11)
        assert "# not a heading" in hit.text
        hit = ix.search("set it up")[0]
        assert (hit.heading, hit.start_line) == ("Setup", 16)
        hit = ix.search("visible kept")[0]
        assert (hit.title, hit.heading, hit.start_line, hit.end_line, hit.text) == (
            "Page title",
            "Top",
            4,
            5,
            "Visible & kept text.",
        )
        assert ix.search("script hidden color") == []
        assert ix.search("walrus")[0].heading == "Part two"
        hit = ix.search("record two")[0]
        assert (hit.title, hit.heading, hit.start_line, hit.text, hit.source) == (
            "records",
            "r2",
            3,
            "Record two.",
            f"{tmp_path / 'records.jsonl'}:3",
        )


def test_pdf_pages_are_read_through_the_pdf_extra(tmp_path):
    pytest.importorskip("pypdf")
    write(
        tmp_path / "manual.pdf",
        make_pdf([["Page one talks about llamas."], ["Page two talks", "about alpacas."]], "Manual"),
    )
    index = tmp_path / "index.db"
    build_index([tmp_path / "manual.pdf"], index, TOKENIZER, passage_tokens=64)
    with Index.open(index) as ix:
        hit = ix.search("alpacas")[0]
        assert (hit.title, hit.unit, hit.start_line, hit.end_line) == (
            "Manual",
            "page",
            1,
            2,
        )  # text runs on across pages
        assert hit.source.endswith("manual.pdf p.1-2")
        assert "alpacas" in hit.text


def test_a_damaged_pdf_is_skipped_and_named(tmp_path):
    pytest.importorskip("pypdf")
    write(tmp_path / "broken.pdf", b"%PDF-1.4\n garbage " * 20)
    write(tmp_path / "ok.txt", "Some text.")
    summary = build_index([tmp_path], tmp_path / "index.db", TOKENIZER, passage_tokens=64)
    assert [path for path, _ in summary.skipped] == [str(tmp_path / "broken.pdf")]
    assert "PDF" in summary.skipped[0][1]


def test_a_pdf_page_whose_text_cannot_be_extracted_costs_that_page_only(tmp_path, monkeypatch):
    pypdf = pytest.importorskip("pypdf")
    write(tmp_path / "manual.pdf", make_pdf([["Llamas on page one."], ["Damaged."], ["Alpacas on page three."]]))
    extract = pypdf.PageObject.extract_text

    def damaged_second_page(page, *args, **kwargs):
        if "Damaged" in extract(page, *args, **kwargs):
            raise KeyError("/Font")  # as pypdf does on a page whose resources are broken
        return extract(page, *args, **kwargs)

    monkeypatch.setattr(pypdf.PageObject, "extract_text", damaged_second_page)
    summary = build_index([tmp_path], tmp_path / "index.db", TOKENIZER, passage_tokens=64)
    assert summary.files == 1 and not summary.skipped
    assert summary.warnings == [f"{tmp_path / 'manual.pdf'}: page 2: no text could be extracted; skipped"]
    with Index.open(tmp_path / "index.db") as ix:
        assert ix.search("llamas") and ix.search("alpacas")[0].end_line == 3


# ---------------------------------------------------------------- bad input


def test_binary_unsupported_and_unreadable_files_are_skipped_and_counted(tmp_path):
    write(tmp_path / "good.txt", "Good text.")
    write(tmp_path / "image.txt", bytes(range(256)) * 4)
    write(tmp_path / "data.bin", b"\x00\x01")
    write(tmp_path / "README", "no suffix")
    (tmp_path / "gone.md").symlink_to(tmp_path / "missing.md")
    os.mkfifo(tmp_path / "pipe.txt")
    write(tmp_path / ".git" / "config.txt", "hidden folders are not walked")
    write(tmp_path / "empty.md", "\n\n  \n")
    (tmp_path / "linked").symlink_to(tmp_path / ".git")  # a link to a folder: named, not walked
    summary = build_index([tmp_path], tmp_path / "index.db", TOKENIZER, passage_tokens=64)
    reasons = {Path(path).name: reason for path, reason in summary.skipped}
    assert reasons == {
        "linked": "a link to a folder, not followed; give its target",
        "image.txt": "binary content",
        "data.bin": "unsupported file type .bin",
        "README": "unsupported file type (no suffix)",
        "gone.md": "unreadable (No such file or directory)",
        "pipe.txt": "not a regular file",
        "empty.md": "no text",
    }
    assert summary.files == 1 and summary.indexed == [str(tmp_path / "good.txt")]
    assert "skipped" in summary.format() and "gone.md: unreadable" in summary.format()
    for n in range(30):
        write(tmp_path / "images" / f"{n}.png", b"\x89PNG")
    summary = build_index([tmp_path], tmp_path / "index.db", TOKENIZER, passage_tokens=64)
    assert len(summary.skipped) == 37 and len(summary.format().splitlines()) == 1 + 10 + 1  # the index is not one
    assert summary.format().splitlines()[-1].startswith("skipped 27 more (")


def test_lines_headings_and_html_are_read_as_editors_and_browsers_read_them(tmp_path):
    """Lines break at line feeds only (a form feed or U+2028 is no line break to `grep -n`, and JSON may
    carry U+2028 raw); a closing # needs a space before it; <head> may be left open; an <svg>'s <title>
    is no page title."""
    write(tmp_path / "feed.txt", "Cover page.\f\nSecond paragraph\u2028still line two.\n\nThe numbat line.\n")
    records = [{"text": "First\u2028record.", "title": "One"}, {"text": "The badger record.", "title": "Two"}]
    write(tmp_path / "recs.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write(tmp_path / "csharp.md", "# Using C#\n\nThe wombat compiles.\n\n## Closed ##\n\nThe quoll runs.\n")
    write(
        tmp_path / "open-head.html",
        "<html><head><title>Open head</title>\n<body><svg><title>tooltip</title></svg>\n<p>The quokka is small.</p>",
    )
    summary = build_index([tmp_path], tmp_path / "index.db", TOKENIZER, passage_tokens=64)
    assert summary.files == 4 and not summary.skipped and not summary.warnings
    with Index.open(tmp_path / "index.db") as ix:
        hit = ix.search("numbat")[0]
        assert (hit.start_line, hit.end_line) == (1, 4)  # as `grep -n` counts
        assert ix.search("badger")[0].source == f"{tmp_path / 'recs.jsonl'}:2"
        assert ix.search("wombat")[0].heading == "Using C#" and ix.search("quoll")[0].heading == "Closed"
        hit = ix.search("quokka")[0]
        assert (hit.title, hit.start_line, hit.text) == ("Open head", 3, "The quokka is small.")


def test_non_utf8_text_is_decoded_with_replacement_and_reported(tmp_path):
    write(tmp_path / "latin.txt", "Caf\xe9 cr\xe8me on the menu.".encode("latin-1"))
    write(tmp_path / "wide.txt", b"\xff\xfe" + "Wide text in sixteen bits.".encode("utf-16-le"))
    summary = build_index([tmp_path], tmp_path / "index.db", TOKENIZER, passage_tokens=64)
    assert summary.files == 2
    assert summary.warnings == [
        f"{tmp_path / 'latin.txt'}: not valid UTF-8 (first bad byte at offset 3); "
        "undecodable bytes replaced with U+FFFD"
    ]
    with Index.open(tmp_path / "index.db") as ix:
        assert ix.search("menu")[0].text == "Caf\ufffd cr\ufffdme on the menu."
        assert ix.search("sixteen")[0].text == "Wide text in sixteen bits."


def test_bad_jsonl_lines_are_reported_and_the_rest_indexed(tmp_path):
    write(tmp_path / "r.jsonl", '{"text": "Kept record."}\nnot json\n{"title": "no text"}\n[1, 2]\n')
    summary = build_index([tmp_path], tmp_path / "index.db", TOKENIZER, passage_tokens=64)
    assert summary.passages == 1
    assert [w.split(": ", 1)[1] for w in summary.warnings] == [
        "line 2: not JSON; skipped",
        'lines 3, 4: no "text" string; skipped',
    ]
    write(tmp_path / "qa.jsonl", "".join(f'{{"question": "q{n}", "answer": "a"}}\n' for n in range(500)))
    with pytest.raises(DataError) as refused:  # a file of other records: one line says why, not 500
        build_index([tmp_path / "qa.jsonl"], tmp_path / "other.db", TOKENIZER)
    assert 'qa.jsonl: no text (lines 1, 2, 3 and 497 more: no "text" string (fields: question, answer)' in str(
        refused.value
    )


def test_an_empty_corpus_is_an_error_and_leaves_no_index(tmp_path):
    write(tmp_path / "docs" / "photo.png", b"\x89PNG\x00")
    with pytest.raises(DataError, match=r"nothing to index.*photo.png: unsupported file type \.png"):
        build_index([tmp_path / "docs"], tmp_path / "index.db", TOKENIZER)
    assert not (tmp_path / "index.db").exists() and list(tmp_path.glob(".index.db*")) == []
    with pytest.raises(DataError, match="does not exist"):
        build_index([tmp_path / "nowhere"], tmp_path / "index.db", TOKENIZER)


# ---------------------------------------------------------------- splitting


@pytest.mark.parametrize("budget", [16, 40, 128])
def test_every_passage_fits_the_budget_covers_the_text_and_overlaps(tmp_path, tok, budget):
    long_word = "x" * 3000  # one "sentence" longer than any budget: cut on tokens
    text = (
        f"# Title\n\n{sentences('alpha', 12)}\n\n- item one\n- item two\n- item three\n\n{long_word}\n\n"
        + "\n".join(sentences("beta", 6).split(". "))
        + "\n\n## Next\n\nLast words.\n"
    )
    document = read_document(SourceFile("k", "doc.md", "markdown"), text.encode())
    pieces = split_document(document, tok, budget, budget // 2)
    lines = text.splitlines()
    assert all(count_tokens(tok, piece.text) <= budget for piece in pieces)
    for piece in pieces:  # each passage's words lie within its line range
        source = " ".join(" ".join(lines[piece.start_line - 1 : piece.end_line]).split())
        for word in piece.text.split():
            assert word.strip("-") in source, (word, piece)
    joined = " ".join(piece.text for piece in pieces).split()
    for sentence in sentences("alpha", 12).split(". "):
        assert " ".join(sentence.split()[:4]) in " ".join(joined)  # nothing is lost
    assert sum(piece.text.count("x") for piece in pieces) >= 3000
    assert pieces[-1].heading == "Next" and pieces[-1].text == "Last words."
    alpha = [piece for piece in pieces if "alpha" in piece.text]
    assert len(alpha) > 1
    overlapping = sum(1 for a, b in zip(alpha, alpha[1:], strict=False) if a.text.split(". ")[-1] in b.text)
    if budget > 16:  # neighbours repeat a sentence where one fits the overlap (at 16, none does)
        assert overlapping >= (len(alpha) - 1) // 2
    no_overlap = split_document(document, tok, budget, 0)  # then the passages are the text, once, in order
    expected = "".join(line for line in lines if not line.startswith("#"))
    assert "".join("".join(p.text for p in no_overlap).split()) == "".join(expected.split())


def test_a_long_unbroken_line_is_tokenized_in_windows(tok):
    """A base64 image pasted into markdown: cut into passages within the budget without tokenizing it
    whole (about 225 bytes of memory a character that way)."""
    import base64
    import random

    from edgeqa.documents.formats import parse_markdown
    from edgeqa.documents.split import WINDOW_CHARS_PER_TOKEN

    blob = base64.b64encode(random.Random(0).randbytes(60_000)).decode()
    document = parse_markdown(f"# Logo\n\n![logo](data:image/png;base64,{blob})\n\nThe emu paragraph.\n", "logo")

    class Recording:
        longest = 0

        def __getattr__(self, name):
            method = getattr(tok, name)

            def call(texts, *args, **kwargs):
                lengths = [len(texts)] if isinstance(texts, str) else [len(t) for t in texts]
                Recording.longest = max(Recording.longest, *lengths)
                return method(texts, *args, **kwargs)

            return call

    pieces = split_document(document, Recording(), 64, 8)
    assert Recording.longest <= 64 * WINDOW_CHARS_PER_TOKEN
    assert all(count_tokens(tok, p.text) <= 64 for p in pieces)
    assert pieces[-1].text.endswith("The emu paragraph.") and len(pieces) > 100


def test_passage_budget_leaves_room_for_the_prompt_and_a_question(tok):
    budget = passage_budget(512, tok)
    frame = count_tokens(tok, "Read this and answer the question\n\n\n\n")
    assert budget == 512 - frame - 48 - 1
    assert passage_budget(128, tok) == 128 - frame - 32 - 1
    with pytest.raises(ConfigError, match="leaves .* for a passage"):
        passage_budget(24, tok)
    with pytest.raises(ConfigError, match="must contain the fields {context} and {question}"):
        passage_budget(512, tok, "no fields")


def fake_artifact(folder: Path, monkeypatch: pytest.MonkeyPatch, max_input_tokens: int) -> type:
    """An artifact folder holding only the bundled tokenizer, whose manifest (read through a stand-in)
    has the given input limit and a reading template; returns the stand-in."""
    from edgeqa import manifest as manifest_module

    class FakeManifest:
        files = {"tokenizer": type("Entry", (), {"path": "tokenizer.json"})()}
        prompt_template = "Please answer this question: {question}"
        context_template = "Passage: {context}\nQuestion: {question}"

    FakeManifest.max_input_tokens = max_input_tokens  # type: ignore[attr-defined]
    monkeypatch.setattr(manifest_module.Manifest, "read", classmethod(lambda cls, folder: FakeManifest()))
    write(folder / "tokenizer.json", TOKENIZER.read_bytes())
    return FakeManifest


def test_passage_size_comes_from_the_artifacts_manifest(tmp_path, monkeypatch, tok):
    FakeManifest = fake_artifact(tmp_path / "art", monkeypatch, max_input_tokens=256)
    sizing = resolve_sizing(artifact=tmp_path / "art")
    assert sizing.tokenizer == tmp_path / "art" / "tokenizer.json"
    assert sizing.passage_tokens == passage_budget(256, tok, FakeManifest.context_template)
    assert sizing.passage_tokens != passage_budget(256, tok)  # the artifact's own template, not FLAN's
    assert resolve_sizing(artifact=tmp_path / "art", passage_tokens=99).passage_tokens == 99
    assert resolve_sizing().passage_tokens == 400 and resolve_sizing(update=True).passage_tokens is None
    with pytest.raises(ConfigError, match="not both"):
        resolve_sizing(artifact=tmp_path, tokenizer=TOKENIZER)


@pytest.mark.parametrize("size", [0, -5, 15])
def test_a_passage_size_too_small_is_named_before_its_overlap(tmp_path, size):
    docs = corpus(tmp_path / "docs", files=1)
    with pytest.raises(ConfigError, match=f"passage_tokens is {size}; give at least 16"):
        build_index([docs], tmp_path / "index.db", TOKENIZER, passage_tokens=size)
    assert not (tmp_path / "index.db").exists()


# ---------------------------------------------------------------- update


def test_update_reindexes_changed_files_only_and_drops_deleted_ones(tmp_path):
    docs = corpus(tmp_path / "docs", files=4)
    index = tmp_path / "index.db"
    first = build_index([docs], index, TOKENIZER, passage_tokens=48)
    assert len(first.indexed) == 4
    write(docs / "doc0.md", "# Document 0\n\nquokka facts replaced everything.\n")  # changed content
    os.utime(docs / "doc1.md", ns=(0, 10**9))  # touched: same content, new mtime -> sha256 says unchanged
    (docs / "doc2.md").unlink()
    write(docs / "new.txt", "A brand new wombat file.")
    summary = build_index([docs], index, TOKENIZER, update=True)
    assert sorted(Path(p).name for p in summary.indexed) == ["doc0.md", "new.txt"]
    assert summary.unchanged == 2 and [Path(p).name for p in summary.removed] == ["doc2.md"]
    assert summary.passage_tokens == 48
    with Index.open(index) as ix:
        assert ix.search("quokka")[0].file.endswith("doc0.md")
        assert ix.search("topic0") == [] and ix.search("zebra2") == []
        assert ix.search("wombat")[0].file.endswith("new.txt")
    rebuilt = tmp_path / "rebuilt.db"
    build_index([docs], rebuilt, TOKENIZER, passage_tokens=48)
    assert passages_of(index) == passages_of(rebuilt)  # an update ends where a rebuild would
    again = build_index([], index, TOKENIZER, update=True)  # no paths: the ones it was built from
    assert again.unchanged == 4 and not again.indexed and not again.removed


def test_update_alone_refreshes_the_same_folders_from_any_working_folder(tmp_path, monkeypatch):
    docs = corpus(tmp_path / "docs", files=3)
    monkeypatch.chdir(tmp_path)
    build_index([Path("docs")], Path("index.db"), TOKENIZER, passage_tokens=48)  # relative paths, as typed
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    write(docs / "doc0.md", "# Document 0\n\nquokka facts replaced everything.\n")
    summary = build_index([], tmp_path / "index.db", TOKENIZER, update=True)
    assert summary.unchanged == 2 and not summary.removed and summary.indexed == [str(docs / "doc0.md")]
    monkeypatch.chdir(tmp_path)  # from where it was built, files are named as that build named them
    write(docs / "doc1.md", "# Document 1\n\nwombat facts replaced everything.\n")
    assert build_index([], Path("index.db"), TOKENIZER, update=True).indexed == [os.path.join("docs", "doc1.md")]
    with Index.open(Path("index.db")) as ix:
        assert ix.search("wombat facts")[0].file == os.path.join("docs", "doc1.md")


def test_an_update_that_creates_the_index_sizes_it_for_the_artifact(tmp_path, monkeypatch):
    fake_artifact(tmp_path / "art", monkeypatch, max_input_tokens=128)
    docs = corpus(tmp_path / "docs", files=1)
    sizes = []
    for name, update in (("built.db", []), ("updated.db", ["--update"])):
        args = ["index", str(docs), "-o", str(tmp_path / name), "--artifact", str(tmp_path / "art"), "--json"]
        result = CliRunner().invoke(app, [*args, *update])
        assert result.exit_code == 0, result.output
        sizes.append(json.loads(result.stdout)["passage_tokens"])
    assert sizes[0] == sizes[1] < 100  # the artifact's budget, not the default 400


def test_an_index_is_read_from_a_read_only_mount(tmp_path):
    """A WAL index in a folder nobody may write (a read-only volume, squashfs) is read as immutable."""
    probe = ["unshare", "-m", "true"]
    if shutil.which("mount") is None or shutil.which("unshare") is None or subprocess.run(probe).returncode:
        pytest.skip("needs unshare -m (root) and mount")
    docs = corpus(tmp_path / "docs", files=1)
    folder = tmp_path / "ro"
    build_index([docs], folder / "index.db", TOKENIZER, passage_tokens=48)
    index = str(folder / "index.db")
    search = f"from edgeqa.documents import Index; print(Index.open({index!r}).search('zebra0')[0].file)"
    script = f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && {sys.executable} -c \"{search}\""
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120)
    if result.returncode != 0 and "Traceback" not in result.stderr:
        pytest.skip(f"no read-only mount here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(docs / "doc0.md")


def test_an_index_whose_name_holds_uri_characters_is_rebuilt(tmp_path):
    docs = corpus(tmp_path / "docs", files=1)
    for name in ("v#2.db", "what?.db", "100%.db"):
        build_index([docs], tmp_path / name, TOKENIZER, passage_tokens=48)
        again = build_index([docs], tmp_path / name, TOKENIZER, passage_tokens=48)  # not "is not an edgeqa index"
        assert again.files == 1


def test_an_index_this_user_may_not_write_is_replaced_in_a_folder_it_may(tmp_path, monkeypatch):
    """The copy into an index needs its file writable; where only the folder is (an index built by root or
    another container), the rebuild renames the new one over it, as a rebuild always did."""
    import edgeqa.documents.build as build

    old, new = corpus(tmp_path / "old", files=1), corpus(tmp_path / "new", files=2)
    index = tmp_path / "index.db"
    build_index([old], index, TOKENIZER, passage_tokens=48)
    real_access = os.access  # as for a user other than the file's owner (root may write anything)
    monkeypatch.setattr(build.os, "access", lambda path, mode: Path(path) != index and real_access(path, mode))

    def read_only(source, output):
        raise sqlite3.OperationalError("attempt to write a readonly database")  # what the copy would meet

    monkeypatch.setattr(build, "_copy_into", read_only)
    assert build_index([new], index, TOKENIZER, passage_tokens=48).files == 2
    assert len({shown for shown, _ in passages_of(index)}) == 2


def test_update_refuses_another_tokenizer_or_passage_size(tmp_path):
    docs = corpus(tmp_path / "docs", files=1)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    other = another_tokenizer(TOKENIZER, tmp_path / "other" / "tokenizer.json")
    with pytest.raises(
        DataError, match=r"was sized with the tokenizer of .* rebuild it with `edgeqa index .* --artifact"
    ):
        build_index([docs], index, other, update=True)
    with pytest.raises(ConfigError, match="holds passages of 48 tokens, not 64"):
        build_index([docs], index, TOKENIZER, passage_tokens=64, update=True)


def test_a_reader_keeps_answering_from_the_old_state_during_an_update(tmp_path):
    docs = corpus(tmp_path / "docs", files=3)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    with sqlite3.connect(index) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    write(docs / "doc0.md", "# Document 0\n\nplatypus only now.\n")
    seen = []
    ix = Index.open(index)

    def during(progress):  # runs inside the update's write transaction
        if progress.files_done == 2:
            result = {}
            reader = threading.Thread(target=lambda: result.update(old=ix.search("zebra0"), new=ix.search("platypus")))
            started = time.perf_counter()
            reader.start()
            reader.join(5)
            seen.append((result, time.perf_counter() - started))

    build_index([docs], index, TOKENIZER, update=True, progress=during)
    ((result, seconds),) = seen
    assert result["old"][0].file.endswith("doc0.md") and result["new"] == []
    assert seconds < 1  # not blocked by the writer
    assert ix.search("platypus")[0].file.endswith("doc0.md") and ix.search("zebra0") == []
    ix.close()


def test_an_update_while_another_writer_holds_the_index_is_refused_cleanly(tmp_path, monkeypatch):
    docs = corpus(tmp_path / "docs", files=1)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    monkeypatch.setattr("edgeqa.documents.store.BUSY_TIMEOUT_MS", 100)
    writer = sqlite3.connect(index, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(DataError, match=f"cannot update {index} .*locked.*unchanged"):
            build_index([docs], index, TOKENIZER, update=True)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_rebuilt_index_is_picked_up_by_an_open_reader(tmp_path):
    docs = corpus(tmp_path / "docs", files=1)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    with Index.open(index) as ix:
        assert ix.search("zebra0")
        write(docs / "doc0.md", "# Renamed\n\nnumbat territory.\n")
        build_index([docs], index, TOKENIZER, passage_tokens=48)
        assert ix.search("zebra0") == [] and ix.search("numbat")[0].title == "Renamed"
        index.rename(tmp_path / "away.db")  # missing for a moment: that search fails, the next ones recover
        with pytest.raises(DataError, match="no index at"):
            ix.search("numbat")
        build_index([docs], index, TOKENIZER, passage_tokens=48)
        assert ix.search("numbat")  # not "list.remove(x): x not in list" for ever after


def test_a_rebuild_while_a_reader_holds_a_snapshot_is_whole_and_shrinks_the_file_after(tmp_path):
    """The reader's snapshot pins an update's log: the rebuild must not be replayed over by it (nor lost)."""
    docs = corpus(tmp_path / "docs", files=6)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    reader = sqlite3.connect(index, isolation_level=None)
    reader.execute("BEGIN")
    before = reader.execute("SELECT count(*) FROM passages").fetchone()
    write(docs / "doc0.md", "# Document 0\n\nplatypus only now.\n")
    build_index([docs], index, TOKENIZER, update=True)  # committed to a log the reader keeps from being emptied
    size = index.stat().st_size
    other = write(tmp_path / "other" / "numbat.md", "# Numbat\n\nnumbat territory.\n")
    build_index([other], index, TOKENIZER, passage_tokens=48)
    build_index([other], tmp_path / "alone.db", TOKENIZER, passage_tokens=48)
    assert reader.execute("SELECT count(*) FROM passages").fetchone() == before  # its snapshot still
    assert passages_of(index) == passages_of(tmp_path / "alone.db")  # a new reader: the rebuild, whole
    reader.execute("COMMIT")
    reader.close()
    with Index.open(index) as ix:
        assert ix.search("numbat")[0].title == "Numbat" and ix.search("platypus") == []
    connection = sqlite3.connect(index)
    assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    pages = connection.execute("PRAGMA page_count").fetchone()[0] * connection.execute("PRAGMA page_size").fetchone()[0]
    connection.close()  # the last connection empties the log into the file and cuts it to size
    assert index.stat().st_size == pages < size and not index.with_name("index.db-wal").exists()


def rebuild_now(paths: list[Path], index: Path) -> str:
    """Rebuild `index` in another thread and wait for it: "rebuilt", or the error's message."""
    outcome: list[str] = []

    def rebuild() -> None:
        try:
            build_index(paths, index, TOKENIZER, passage_tokens=48)
            outcome.append("rebuilt")
        except DataError as e:
            outcome.append(str(e))

    thread = threading.Thread(target=rebuild)
    thread.start()
    thread.join(120)
    assert not thread.is_alive() and len(outcome) == 1
    return outcome[0]


def test_a_rebuild_while_an_update_writes_is_refused_not_reported_done_and_lost(tmp_path, monkeypatch):
    docs = corpus(tmp_path / "docs", files=3)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    other = write(tmp_path / "other" / "numbat.md", "# Numbat\n\nnumbat territory.\n")
    write(docs / "doc0.md", "# Document 0\n\nplatypus only now.\n")
    monkeypatch.setattr("edgeqa.documents.store.BUSY_TIMEOUT_MS", 200)
    outcome = []

    def during(progress):  # inside the update's write transaction: the rebuild ends before the update does
        if progress.files_done == 1:
            outcome.append(rebuild_now([other], index))

    build_index([docs], index, TOKENIZER, update=True, progress=during)
    assert re.fullmatch(f"{index} is being written by another process .*try again.*", outcome[0])
    with Index.open(index) as ix:
        assert ix.search("platypus") and ix.search("numbat") == []  # the update's, whole
        build_index([other], index, TOKENIZER, passage_tokens=48)  # once it is done, a rebuild goes through
        assert ix.search("numbat")[0].title == "Numbat" and ix.search("platypus") == []


def test_a_rebuild_as_an_update_starts_is_not_undone_by_that_update(tmp_path, monkeypatch):
    """An update reads the index's paths and sizes under its write lock: a rebuild cannot come in between."""
    docs = corpus(tmp_path / "docs", files=3)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    other = write(tmp_path / "other" / "numbat.md", "# Numbat\n\nnumbat territory.\n")
    monkeypatch.setattr("edgeqa.documents.store.BUSY_TIMEOUT_MS", 200)
    from edgeqa.documents import build

    discover, outcome = build.discover, []

    def rebuild_first(roots, output):  # the update has opened the index and reads its files next
        monkeypatch.setattr(build, "discover", discover)
        outcome.append(rebuild_now([other], index))
        return discover(roots, output)

    monkeypatch.setattr(build, "discover", rebuild_first)
    build_index([], index, TOKENIZER, update=True)  # `--update` alone: the paths the index holds
    assert re.fullmatch(f"{index} is being written by another process .*try again.*", outcome[0])
    assert rebuild_now([other], index) == "rebuilt"
    with Index.open(index) as ix:
        assert ix.search("numbat")[0].title == "Numbat" and ix.search("zebra0") == []


def test_an_open_reader_refuses_an_index_rebuilt_for_another_tokenizer(tmp_path):
    docs = corpus(tmp_path / "docs", files=1)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    from edgeqa.documents import tokenizer_sha256

    with Index.open(index, tokenizer_sha256=tokenizer_sha256(TOKENIZER)) as ix:
        assert ix.search("zebra0")
        other = another_tokenizer(TOKENIZER, tmp_path / "other" / "tokenizer.json")
        build_index([docs], index, other, passage_tokens=48, tokenizer_name="other")
        with pytest.raises(DataError, match="sized with the tokenizer of other"):
            ix.search("zebra0")


@pytest.mark.parametrize("update", [False, True], ids=["index", "update"])
def test_a_full_disk_is_named_with_its_fix_and_leaves_the_index_as_it_was(tmp_path, monkeypatch, update):
    docs = corpus(tmp_path / "docs", files=2)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    before = passages_of(index)
    write(docs / "big.md", f"# Big\n\n{sentences('overflow', 3000)}\n")
    connect = store.connect

    def on_a_full_disk(path: Path, write: bool = False) -> sqlite3.Connection:
        """A writer whose file can grow by a few pages only: SQLite fails as on a full disk (SQLITE_FULL)."""
        connection = connect(path, write)
        if write:
            pages = connection.execute("PRAGMA page_count").fetchone()[0]
            connection.execute(f"PRAGMA max_page_count = {pages + 30}")
        return connection

    monkeypatch.setattr(store, "connect", on_a_full_disk)
    with pytest.raises(DataError, match=r"\(database or disk is full\); .*unchanged: free space on its disk"):
        build_index([docs], index, TOKENIZER, passage_tokens=None if update else 48, update=update)
    assert passages_of(index) == before
    assert list(tmp_path.glob(".index.db.*")) == []


# ---------------------------------------------------------------- refusing files


def test_another_format_version_is_refused_with_advice(tmp_path):
    docs = corpus(tmp_path / "docs", files=1)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    with sqlite3.connect(index) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    with pytest.raises(
        DataError,
        match=rf"format 99; this edgeqa reads format 1: upgrade edgeqa or rebuild it with `edgeqa index {docs} -o",
    ):
        Index.open(index)
    with pytest.raises(DataError, match="format 99"):
        build_index([docs], index, TOKENIZER, update=True)
    build_index([docs], index, TOKENIZER, passage_tokens=48)  # a rebuild replaces it
    assert Index.open(index).info.format_version == 1


def test_an_index_for_another_tokenizer_is_refused_by_a_reader(tmp_path):
    docs = corpus(tmp_path / "docs", files=1)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48, tokenizer_name="flan-t5")
    with pytest.raises(DataError, match=r"sized with the tokenizer of flan-t5 .* not my-model's"):
        Index.open(index, tokenizer_sha256="0" * 64, tokenizer_name="my-model")
    from edgeqa.documents import tokenizer_sha256

    assert Index.open(index, tokenizer_sha256=tokenizer_sha256(TOKENIZER)).info.passages > 0


def test_the_tokenizer_fingerprint_is_the_tokenizers_not_the_files(tmp_path):
    """An artifact's tokenizer.json is FLAN-T5's re-saved (a truncation block, other float formatting):
    an index sized with the bundled file serves it; a tokenizer that splits otherwise is another."""
    from tokenizers import Tokenizer

    from edgeqa.documents import tokenizer_sha256

    resaved = Tokenizer.from_file(str(TOKENIZER))
    resaved.enable_truncation(32)
    resaved.save(str(tmp_path / "resaved.json"), pretty=False)
    assert (tmp_path / "resaved.json").read_bytes() != TOKENIZER.read_bytes()
    assert tokenizer_sha256(tmp_path / "resaved.json") == tokenizer_sha256(TOKENIZER)
    assert tokenizer_sha256(another_tokenizer(TOKENIZER, tmp_path / "other.json")) != tokenizer_sha256(TOKENIZER)
    docs = corpus(tmp_path / "docs", files=1)  # an index from before, which recorded the file's sha256
    build_index([docs], tmp_path / "old.db", TOKENIZER, passage_tokens=48)
    connection = sqlite3.connect(tmp_path / "old.db")
    with connection:
        file_sha256 = hashlib.sha256(TOKENIZER.read_bytes()).hexdigest()
        connection.execute("UPDATE meta SET value = ? WHERE key = 'tokenizer_sha256'", (file_sha256,))
    connection.close()
    assert build_index([docs], tmp_path / "old.db", TOKENIZER, update=True).passages > 0  # still its tokenizer


def test_corrupt_or_foreign_files_are_refused_naming_them(tmp_path):
    garbage = write(tmp_path / "garbage.db", os.urandom(4096))
    with pytest.raises(DataError, match=f"{garbage} is not an edgeqa index or is damaged"):
        Index.open(garbage)
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE t (x)")
    with pytest.raises(DataError, match=f"{foreign} is a SQLite database but not an edgeqa index"):
        Index.open(foreign)
    docs = corpus(tmp_path / "docs", files=1)
    before = foreign.read_bytes()
    with pytest.raises(DataError, match=f"{foreign} exists and is not an edgeqa index"):
        build_index([docs], foreign, TOKENIZER)
    assert foreign.read_bytes() == before
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    data = index.read_bytes()
    truncated = write(tmp_path / "truncated.db", data[: len(data) // 3])
    with pytest.raises(DataError, match=str(truncated)):
        with Index.open(truncated) as ix:
            ix.search("zebra0 topic0 report")
    with pytest.raises(DataError, match="no index at"):
        Index.open(tmp_path / "missing.db")


@pytest.mark.parametrize("damage, offset", [(b"tablefilesfiles", 5), (b"CREATE TABLE files (", 7)])
def test_a_schema_that_is_not_utf8_is_a_damaged_index_not_a_traceback(tmp_path, damage, offset):
    """SQLite's message then quotes the bytes, which Python cannot decode: a UnicodeDecodeError, not its error."""
    docs = corpus(tmp_path / "docs", files=3)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    data = bytearray(index.read_bytes())
    at = data.find(damage)
    assert at >= 0
    data[at + offset] = 0xA9  # the table's name, the statement's keyword
    index.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"is a damaged edgeqa index .*rebuild it with"):
        with Index.open(index) as ix:
            ix.search("zebra0 topic0 report")
    result = CliRunner().invoke(app, ["index", str(docs), "-o", str(index), "--passage-tokens", "48"])
    assert result.exit_code == 0, result.output  # the command the error advises replaces it
    with Index.open(index) as ix:
        assert ix.search("zebra0 lives")[0].file.endswith("doc0.md")


@pytest.fixture(scope="module")
def flip_index(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("flip")
    build_index([corpus(folder / "docs", files=3)], folder / "index.db", TOKENIZER, passage_tokens=48)
    return (folder / "index.db").read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=6))
def test_byte_flips_in_an_index_are_refused_or_read(flip_index, tmp_path, flips):
    data = bytearray(flip_index)
    for position, mask in flips:
        data[position % len(data)] ^= mask
    index = tmp_path / "flipped.db"
    for stale in tmp_path.glob("flipped.db*"):
        stale.unlink()
    index.write_bytes(bytes(data))
    try:
        with Index.open(index) as ix:
            passages = ix.search("zebra1 topic1 report", k=3)
        assert all(isinstance(p.text, str) for p in passages)
    except DataError as e:  # refused with its message; anything else escapes and fails the test
        assert str(index) in str(e)


def test_a_damaged_index_is_rebuilt_by_the_command_its_error_advises(tmp_path):
    docs = corpus(tmp_path / "docs", files=3)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    data = index.read_bytes()
    index.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="is a damaged edgeqa index") as refused:
        Index.open(index)
    advised = re.search(r"`edgeqa index PATH\.\.\. -o (\S+)`", str(refused.value))
    assert advised and advised.group(1) == str(index)
    result = CliRunner().invoke(app, ["index", str(docs), "-o", advised.group(1), "--passage-tokens", "48"])
    assert result.exit_code == 0, result.output
    with Index.open(index) as ix:
        assert ix.search("zebra2")[0].file.endswith("doc2.md")
    foreign = tmp_path / "foreign.db"  # another program's database, damaged the same way, is still refused
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE t (x)")
        connection.executemany("INSERT INTO t VALUES (?)", [(os.urandom(1000),) for _ in range(50)])
    connection.close()
    foreign.write_bytes(foreign.read_bytes()[: foreign.stat().st_size // 2])
    before = foreign.read_bytes()
    with pytest.raises(DataError, match="not an edgeqa index or is damaged beyond recognition"):
        Index.open(foreign)
    with pytest.raises(DataError, match=f"{foreign} exists and is not an edgeqa index"):
        build_index([docs], foreign, TOKENIZER)
    assert foreign.read_bytes() == before


# ---------------------------------------------------------------- kill -9

KILLED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edgeqa.documents import build_index

    docs, index, marker, update = sys.argv[1:5]

    def progress(p):
        if p.files_done == 3:
            Path(marker).write_text("inside")
            time.sleep(120)

    build_index([docs], index, sys.argv[5], passage_tokens=48, update=update == "1", progress=progress)
    """
)


def kill_during_build(tmp_path: Path, docs: Path, index: Path, update: bool) -> None:
    marker = tmp_path / f"marker-{update}"
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(docs), str(index), str(marker), "1" if update else "0", str(TOKENIZER)]
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("update", [False, True], ids=["index", "update"])
def test_kill_9_during_indexing_leaves_the_previous_index_intact(tmp_path, update):
    docs = corpus(tmp_path / "docs", files=6)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    before = passages_of(index)
    for n in range(6):  # every file changes, so the killed run has deleted and written passages
        write(docs / f"doc{n}.md", f"# Changed {n}\n\n{sentences(f'changed{n}', 20)}\n")
    kill_during_build(tmp_path, docs, index, update)
    with sqlite3.connect(index) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert passages_of(index) == before
    with Index.open(index) as ix:
        assert ix.search("zebra0")[0].file.endswith("doc0.md") and ix.search("changed0") == []
    summary = build_index([docs], index, TOKENIZER, update=update, passage_tokens=None if update else 48)
    assert len(summary.indexed) == 6
    assert list(tmp_path.glob(".index.db.*")) == []  # a killed build's leftovers are cleaned up


# ---------------------------------------------------------------- search


def test_search_ranks_by_bm25_and_returns_nothing_for_unknown_words(tmp_path):
    docs = corpus(tmp_path / "docs", files=3)
    index = tmp_path / "index.db"
    build_index([docs], index, TOKENIZER, passage_tokens=48)
    with Index.open(index) as ix:
        hits = ix.search("Where does zebra1 live?", k=2)
        assert hits[0].file.endswith("doc1.md") and hits[0].heading == "Details" and hits[0].rank == 1
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
        assert len(ix.search("report harbour shipment", k=7)) == 7
        assert ix.search("xylophone quetzalcoatl") == [] and ix.search("?!") == []
        assert ix.search("what is the") != []  # only common words: they are searched after all
        assert hits[0].to_dict()["source"] == hits[0].source
        for k in (0, 101, True, 2.0):  # the reader's own rule (check_k): ask --index and serve -k refuse the same
            with pytest.raises(InputError, match=rf"k is {k!r}; read 1 to 100 passages"):
                ix.search("zebra1", k=k)  # type: ignore[arg-type]
        results = []
        threads = [threading.Thread(target=lambda: results.append(ix.search("zebra2"))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 4 and all(r and r[0].file.endswith("doc2.md") for r in results)


def test_each_country_page_is_found_first_by_its_question(tmp_path):
    """The documents demo's shape: one page per country of the bundled facts world, one question each."""
    with open(bundled_tokenizer().parents[1] / "facts" / "countries.csv", encoding="utf-8") as f:
        countries = [{key: value.strip() for key, value in row.items()} for row in csv.DictReader(f)]
    for row in countries:
        name = row["name"]
        write(
            tmp_path / "pages" / f"{re.sub('[^A-Za-z]+', '-', name)}.md",
            f"# {name}\n\n{name} is a country in {row['continent']}. The capital of {name} is {row['capital']}. "
            f"The currency of {name} is the {row['currency']}. Its internet domain is {row['tld']}.\n",
        )
    build_index([tmp_path / "pages"], tmp_path / "index.db", TOKENIZER)
    with Index.open(tmp_path / "index.db") as ix:
        first = [ix.search(f"What is the capital of {row['name']}?")[0].title for row in countries]
    assert first == [row["name"] for row in countries]


def test_fts_query_quotes_every_term():
    assert fts_query('What is "NEAR(a b)" OR title:x* ^y -z?') == '"near" OR "b" OR "title" OR "x" OR "y" OR "z"'
    assert fts_query("what is it") == '"what" OR "is" OR "it"'
    assert fts_query("  ?!  ") is None
    held = {"capital": 9000, "france": 10, "paris": 1500, "city": 600, "zzz": 0}
    assert fts_query("capital of France zzz", held) == '("france") AND ("capital" OR "france")'
    assert (
        fts_query("city capital paris france", held)
        == '("city" OR "france") AND ("city" OR "capital" OR "paris" OR "france")'
    )
    assert fts_query("capital", held) == '"capital"'  # nothing rarer: the common word alone
    assert fts_query("zzz", held) is None  # in no passage: no search at all
    assert narrow_query("capital of France", held) is None  # a rare word: no need
    assert narrow_query("best capital", {"capital": 9000, "best": 20000}) == (
        '("capital" AND "best") AND ("best" OR "capital")'
    )


def test_searches_with_common_words_only_still_find_passages(tmp_path, monkeypatch):
    docs = corpus(tmp_path / "docs", files=3)
    build_index([docs], tmp_path / "index.db", TOKENIZER, passage_tokens=48)
    monkeypatch.setattr("edgeqa.documents.query.CANDIDATES", 0)  # every word is "common"
    with Index.open(tmp_path / "index.db") as ix:
        (hit,) = ix.search("zebra1 lives", k=1)  # passages holding both rarest words
        assert hit.file.endswith("doc1.md") and hit.heading == "Details"
        hits = ix.search("harbour zebra1", k=2)  # none holds both: the rarest word alone picks candidates
        assert [(h.file[-7:], h.heading) for h in hits] == [("doc1.md", "Details")]


@pytest.fixture(scope="module")
def fuzz_index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    corpus(folder / "docs", files=2)
    build_index([folder / "docs"], folder / "index.db", TOKENIZER, passage_tokens=48)
    ix = Index.open(folder / "index.db")
    yield ix
    ix.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(question=st.text(max_size=200) | st.text(alphabet='"*^():-+ANDORNEAR{}[],. ab', max_size=60))
def test_no_question_is_read_as_fts_syntax(fuzz_index, question):
    hits = fuzz_index.search(question, k=3)  # never an FTS5 syntax error
    assert len(hits) <= 3
    query = fts_query(question)
    if query is not None:
        for term in query.split(" OR "):
            assert term.startswith('"') and term.endswith('"') and '"' not in term[1:-1]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.binary(max_size=600) | st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
    suffix=st.sampled_from(sorted(FORMATS)),
)
def test_no_file_content_crashes_a_loader(tok, data, suffix):
    source = SourceFile("k", f"file{suffix}", FORMATS[suffix])
    try:
        document = read_document(source, data)
    except Skip:
        return
    for piece in split_document(document, tok, 24, 3):
        assert count_tokens(tok, piece.text) <= 24 and piece.start_line <= piece.end_line


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=300), suffix=st.sampled_from([".txt", ".md", ".html", ".jsonl"]))
def test_any_file_is_indexed_skipped_or_reported(tmp_path_factory, data, suffix):
    folder = tmp_path_factory.mktemp("any")
    write(folder / f"f{suffix}", data)
    write(folder / "anchor.txt", "anchor text")
    summary = build_index([folder], folder / "index.db", TOKENIZER, passage_tokens=32)
    target = str(folder / f"f{suffix}")
    assert (target in summary.indexed) != (target in [path for path, _ in summary.skipped])
    shutil.rmtree(folder)


def test_the_documents_package_loads_no_model_libraries():
    code = (
        "import sys, edgeqa.documents, edgeqa.documents.sizing; "
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'numpy', 'pypdf') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- CLI


@pytest.mark.slow
def test_cli_index_shows_a_progress_bar_at_a_terminal_and_none_in_a_pipe(tmp_path):
    """`edgeqa index` in tmux draws a bar on stderr; piped (CliRunner), stderr stays quiet."""
    from terminal import Tmux

    docs = corpus(tmp_path / "docs", files=30)
    command = f"{sys.executable} -m edgeqa.cli index {docs} -o {tmp_path / 'i.db'}; echo EXIT=$?; sleep 60"
    terminal = Tmux(f"edgeqa-{tmp_path.name}", command)
    try:
        shown = terminal.wait_for("EXIT=")
        assert "EXIT=0" in shown, shown
        [bar] = [line for line in shown.splitlines() if line.startswith("indexing 30 files")]
        assert "[" in bar and "#" in bar and "100%" in bar, bar
    finally:
        terminal.close()
    piped = CliRunner().invoke(app, ["index", str(docs), "-o", str(tmp_path / "j.db")])
    assert piped.exit_code == 0 and piped.stderr == "", piped.stderr


def test_cli_index_prints_the_summary_and_errors_exit_1(tmp_path):
    docs = corpus(tmp_path / "docs", files=2)
    write(docs / "skip.bin", b"\x00")
    runner = CliRunner()
    result = runner.invoke(app, ["index", str(docs), "-o", str(tmp_path / "i.db"), "--passage-tokens", "48"])
    assert result.exit_code == 0, result.output
    assert "2 files" in result.stdout and "skip.bin: unsupported file type .bin" in result.stdout
    result = runner.invoke(app, ["index", "-o", str(tmp_path / "i.db"), "--update", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["unchanged"] == 2
    result = runner.invoke(app, ["index", str(tmp_path / "nowhere"), "-o", str(tmp_path / "j.db")])
    assert result.exit_code == 1 and "does not exist" in result.stderr
    result = runner.invoke(
        app, ["index", str(docs), "-o", str(tmp_path / "k.db"), "--tokenizer", str(docs / "doc0.md")]
    )
    assert result.exit_code == 1 and "cannot load the tokenizer" in result.stderr


def test_cli_paths_with_a_tilde_the_shell_left_are_under_home(tmp_path, monkeypatch):
    home, here = tmp_path / "home", tmp_path / "here"
    corpus(home / "docs", files=1), here.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(here)
    result = CliRunner().invoke(app, ["index", "~/docs", "--output=~/i.db", "--passage-tokens", "48"])
    assert result.exit_code == 0, result.output
    assert (home / "i.db").is_file() and list(here.iterdir()) == []  # no folder named ~


def test_the_retrieval_benchmark_measures_a_small_corpus(tmp_path):
    from edgeqa.bench.retrieval import measure, table

    result = measure(150, tmp_path, passage_tokens=200, queries=60, mb_per_passage=0.0008)
    assert 100 <= result.passages <= 300 and result.queries == 60
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms and result.build_mb_per_s > 0
    assert f"| {result.passages:,} |" in table([result], 200)
    assert list(tmp_path.iterdir()) == []  # corpus and index removed

"""Reading question files: a line is what editors count, whatever the text inside a record holds."""

from __future__ import annotations

import json

import pytest

from edgeqa.records import read_records
from edgeqa.runtime.questions import read_questions

# Line and paragraph separators, NEL and form feed: `str.splitlines` breaks at each, JSON leaves them unescaped.
INNER_BREAKS = "a\u2028b\u2029c\x85d\x0ce"


def test_jsonl_records_keep_unicode_line_separators_inside_strings(tmp_path):
    path = tmp_path / "heldout.jsonl"
    rows = [{"question": f"Q{INNER_BREAKS}?", "answer": INNER_BREAKS}, {"question": "Q2?", "answer": "A2"}]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    records = read_records(path)
    assert [(r.question, r.answer) for r in records] == [(f"Q{INNER_BREAKS}?", INNER_BREAKS), ("Q2?", "A2")]


def test_csv_records_keep_quoted_line_breaks(tmp_path):
    path = tmp_path / "qa.csv"
    path.write_text(f'question,answer\r\n"Two\r\nlines?","{INNER_BREAKS}"\r\nQ2?,A2\r\n', encoding="utf-8")
    records = read_records(path)
    assert [(r.question, r.answer) for r in records] == [("Two\nlines?", INNER_BREAKS), ("Q2?", "A2")]


def test_question_file_lines_are_numbered_as_an_editor_numbers_them(tmp_path):
    path = tmp_path / "q.jsonl"
    lines = [json.dumps({"question": f"Q{INNER_BREAKS}?"}, ensure_ascii=False), "not json", '{"question": "Q3?"}']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    questions, problems = read_questions(path)
    assert [(q.line, q.text) for q in questions] == [(1, f"Q{INNER_BREAKS}?"), (3, "Q3?")]
    assert problems == ['line 2: not a JSON object with a "question" field; skipped']


def test_a_number_is_an_answer_zero_too(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "Moons of Mercury?", "answer": 0}\n{"question": "Of Mars?", "answer": 2}\n')
    assert [r.answer for r in read_records(path)] == ["0", "2"]


def test_rouge_reads_words_of_every_script_and_english_as_rouge_score_does():
    from rouge_score import rouge_scorer

    from edgeqa.metrics import rouge

    assert rouge(["Москва"], ["Москва"])["rougeL"] == 1.0
    assert rouge(["Zürich"], ["Zärich"])["rougeL"] == 0.0
    english = ["The cats were running home.", "It is 42 km (26 miles) away!", "Paris"]
    others = ["A cat runs home", "about 40 km away", "Paris, France"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(others, english, strict=True)) / 3
    assert rouge(others, english)["rougeL"] == pytest.approx(expected)

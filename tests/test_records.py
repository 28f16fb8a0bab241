"""Reading question files: a line is what editors count, whatever the text inside a record holds."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeqa.errors import DataError, InputError
from edgeqa.records import read_records
from edgeqa.runtime.questions import read_questions

# Line and paragraph separators, NEL and form feed: `str.splitlines` breaks at each, JSON leaves them unescaped.
INNER_BREAKS = "a\u2028b\u2029c\x85d\x0ce"
SUFFIXES = [".jsonl", ".json", ".csv"]


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


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("qa.jsonl", '{"question": "Q?", "answer": "A"}\n[1]\n', r"line 2 of .* is not a record: a JSON object"),
        ("qa.jsonl", "5\n", r"line 1 of .* is not a record"),
        ("qa.json", "5", r"holds a JSON int; give a list of records"),
        ("qa.json", '[{"question": "Q?", "answer": "A"}, "loose"]', r"record 2 of .* is not a record"),
        ("qa.csv", "question,answer\nQ?,A\nQ2?,A,extra\n", r"record 2 of .* has more fields than the header"),
        ("qa.jsonl", "[" * 100_000 + "\n", r"nested too deeply"),
        ("qa.jsonl", '{"question": "Q?", "answer": "  "}\n', r"record 1 of .* has no answer; fields available"),
        ("qa.jsonl", '{"q": "Q?", "answer": "A"}\n', r"has no question; fields available: answer, q"),
        ("qa.jsonl", "\n\n", r"holds no records"),
        ("qa.txt", "Q?\n", r"unsupported type .txt"),
    ],
)
def test_bad_record_files_are_one_data_error_naming_the_place(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_records(path)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["question", "answer", "x"]), inner),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(JSON, min_size=1, max_size=5), text=st.text(max_size=80), suffix=st.sampled_from(SUFFIXES))
def test_any_file_is_read_or_refused_with_a_data_error(tmp_path, values, text, suffix):
    path = tmp_path / f"qa{suffix}"
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(v) for v in values) + "\n" + text, encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(values if len(values) > 1 else values[0]), encoding="utf-8")
    else:
        path.write_text(f"question,answer\n{text}\n", encoding="utf-8")
    try:
        records = read_records(path)
    except DataError:
        return
    assert records and all(r.question.strip() and r.answer.strip() for r in records)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.text(max_size=40) | JSON.map(json.dumps) | st.just("[" * 5000), min_size=1, max_size=6))
def test_any_question_file_is_read_or_refused_with_an_input_error(tmp_path, lines):
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    try:
        questions, problems = read_questions(path)
    except InputError:
        return
    assert questions and all(isinstance(q.text, str) and q.text.strip() for q in questions)
    assert len(questions) + len(problems) <= len("\n".join(lines).split("\n"))

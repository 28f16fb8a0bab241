"""The reader: a question read from a passage (`--context`), and from the top passages of an index
(`DocumentsQA`, `ask --index`, `serve --index`). Mechanics on the untrained tiny artifact, in seconds;
whether a trained reader reads right is `tests/test_demo.py`'s (`edgeqa demo --documents`)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import another_tokenizer
from edgeqa.cli import app
from edgeqa.documents import (
    NO_PASSAGE,
    NOT_ANSWERED,
    Candidate,
    DocumentsQA,
    Index,
    Passage,
    build_index,
    passage_budget,
)
from edgeqa.documents.answers import MAX_RETRIEVAL_WEIGHT, choose, retrieval_logprobs
from edgeqa.documents.store import load_tokenizer
from edgeqa.errors import ConfigError, InputError
from edgeqa.runtime import QAModel, Row
from edgeqa.serve.config import ServeConfig

runner = CliRunner()
ROUTER = """# Router

To reset the router, hold the reset button for ten seconds until the lights blink.

## Lights

A green light means the router is online. A red light means there is no connection.
"""
KETTLE = "# Kettle\n\nDescale the kettle every month with vinegar and water.\n"
OPTS = dict(max_new_tokens=6)


@pytest.fixture(scope="module")
def model(artifact_tiny: Path) -> QAModel:
    return QAModel.load(artifact_tiny, threads=1)


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs")
    (folder / "router.md").write_text(ROUTER, encoding="utf-8")
    (folder / "kettle.md").write_text(KETTLE, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def index(docs: Path, artifact_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("index") / "docs.edgeqa-index"
    result = runner.invoke(app, ["index", str(docs), "-o", str(path), "--artifact", str(artifact_tiny)])
    assert result.exit_code == 0, result.output
    return path


def test_the_answer_has_the_best_joint_score_and_each_reading_is_the_runtimes(model, index):
    with DocumentsQA(model, Index.open(index), k=4) as qa:
        answer = qa.ask("How do I reset the router?", model.options(**OPTS))
    assert answer.found and len(answer.candidates) == 2  # the router page's two sections
    assert [c.passage.rank for c in answer.candidates] == [1, 2]
    first, second = answer.candidates
    # each passage's retrieval log-probability: a softmax of the BM25 scores of the two found
    assert math.exp(first.retrieval) + math.exp(second.retrieval) == pytest.approx(1.0)
    assert first.retrieval - second.retrieval == pytest.approx(first.passage.score - second.passage.score)
    best = max(answer.candidates, key=lambda c: (c.score + c.retrieval, -c.passage.rank))
    assert answer.source is best.passage and answer.text == best.answer
    for candidate in answer.candidates:
        # each reading is what the runtime answers from that passage alone, with its own score
        alone = model.answer("How do I reset the router?", context=candidate.passage.text, **OPTS)
        assert candidate.answer == alone.text
        decoder = model.decoder()
        [(ids, _)] = decoder.prompts(["How do I reset the router?"], [candidate.passage.text])
        row = Row(ids, model.options(**OPTS), scored=True)
        decoder.join([row])
        decoder.run()
        assert candidate.score == pytest.approx(row.score, abs=1e-9) and candidate.score < 0
        assert (candidate.prompt_tokens, candidate.answer_tokens) == (len(row.ids), len(row.tokens))
        assert candidate.joint == pytest.approx(candidate.score + candidate.retrieval)
    data = answer.to_dict()
    assert data["source"] == answer.source.source and Path(data["source"]).name.startswith("router.md:")
    keys = {"answer", "reader_score", "retrieval_logprob", "joint_score", "source", "rank", "bm25", "passage"}
    assert keys <= set(data["candidates"][0])
    assert data["joint_score"] == pytest.approx(answer.chosen.joint, abs=1e-4)


def test_a_batch_of_questions_reads_as_one_question_at_a_time(model, index):
    questions = ["How do I reset the router?", "What does a red light mean?", "How do I descale the kettle?"]
    with DocumentsQA(model, Index.open(index)) as qa:
        batched = qa.ask_batch(questions, model.options(**OPTS), batch_size=3)
        alone = [qa.ask(q, model.options(**OPTS)) for q in questions]
    assert [a.to_dict() for a in batched] == [a.to_dict() for a in alone]
    assert Path(batched[2].source.file).name == "kettle.md"


def test_a_question_that_matches_nothing_gets_no_passage_found(model, index):
    with DocumentsQA(model, Index.open(index)) as qa:
        answer = qa.ask("zebra quasar", model.options(**OPTS))
        assert (answer.text, answer.found, answer.candidates) == (NO_PASSAGE, False, [])
        with pytest.raises(InputError, match="the question is empty"):
            qa.ask("   ")
        with pytest.raises(InputError, match="read 1 to 100 passages"):
            qa.ask("router", k=0)


@pytest.mark.parametrize("question", [None, 123, b"router?"])
def test_a_question_that_is_not_a_string_is_refused_naming_its_type(model, index, question):
    message = f"a question must be a string, got {type(question).__name__}"
    with DocumentsQA(model, Index.open(index)) as qa:
        with pytest.raises(InputError, match=message):
            qa.ask(question)
        with pytest.raises(InputError, match=message):
            qa.ask_batch(["How do I reset the router?", question])
        with pytest.raises(InputError, match=message):
            qa.index.search(question)


def test_ask_batch_takes_a_list_of_questions_and_generation_options(model, index):
    with DocumentsQA(model, Index.open(index)) as qa:
        with pytest.raises(InputError, match=r"ask_batch takes a list of questions, got str; use ask\(\) for one"):
            qa.ask_batch("How do I reset the router?")
        with pytest.raises(InputError, match="options must be a GenerationOptions, got dict"):
            qa.ask("How do I reset the router?", {"max_new_tokens": 6})
        with pytest.raises(InputError, match="batch_size must be a whole number, got str"):
            qa.ask_batch(["How do I reset the router?"], batch_size="8")


def test_threads_that_end_leave_no_connection_open(model, index):
    """A server's worker threads come and go: each one's connection is closed once it has ended."""
    import os
    import threading

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    question = "How do I reset the router?"
    with Index.open(index) as shared:
        expected = [p.to_dict() for p in shared.search(question)]
        found: list[list[dict]] = []
        counts = []
        for _ in range(50):
            thread = threading.Thread(target=lambda: found.append([p.to_dict() for p in shared.search(question)]))
            thread.start()
            thread.join()
            counts.append(open_files())
        assert found == [expected] * 50
        assert max(counts) - min(counts) <= 4, counts  # one connection's files at most, not fifty
        assert len(shared._held) <= 2  # this thread's and the last one's, closed by the next to open one


def test_passages_too_long_for_the_reader_are_skipped_and_named(model, docs, artifact_tiny, tmp_path):
    tokenizer = artifact_tiny / "tokenizer.json"
    fits = passage_budget(model.manifest.max_input_tokens, load_tokenizer(tokenizer))
    long_doc = tmp_path / "long"
    long_doc.mkdir()
    (long_doc / "manual.md").write_text(
        "# Manual\n\n" + " ".join(f"Step {i}: press the router button." for i in range(40)) + "\n\n" + KETTLE,
        encoding="utf-8",
    )
    path = tmp_path / "long.edgeqa-index"
    build_index([long_doc], path, tokenizer, passage_tokens=fits * 10)  # the manual in one passage: too long
    with DocumentsQA(model, Index.open(path)) as qa:
        with pytest.raises(InputError, match=r"could be read: the question and its passage are \d+ tokens, over"):
            qa.ask("Which router button?", model.options(**OPTS))
        answer = qa.ask("Which button descales the kettle?", model.options(**OPTS))
    assert answer.found
    unread = [c for c in answer.candidates if c.error]
    assert unread and all("over the model's limit" in c.error and c.score is None for c in unread)
    assert answer.source not in [c.passage for c in unread]


def test_ask_index_prints_the_answer_and_its_source(artifact_tiny, index, tmp_path):
    base = ["ask", str(artifact_tiny), "--index", str(index), "--max-new-tokens", "6"]
    plain = runner.invoke(app, [*base, "How do I reset the router?"])
    assert plain.exit_code == 0, plain.output
    answer, source = plain.stdout.splitlines()
    assert source.startswith("source: ") and Path(source).name.startswith("router.md:")
    data = json.loads(runner.invoke(app, [*base, "How do I reset the router?", "--json", "-k", "2"]).stdout)
    assert data["answer"] == answer and data["found"] and len(data["candidates"]) == 2
    nothing = runner.invoke(app, [*base, "zebra quasar"])
    assert nothing.exit_code == 0 and nothing.stdout.strip() == NO_PASSAGE

    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "How do I reset the router?"}\nnot json\n{"question": "zebra"}\n')
    out = tmp_path / "answers.jsonl"
    result = runner.invoke(app, [*base, "--file", str(questions), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["line"], r["found"]) for r in rows] == [(1, True), (3, False)]
    assert rows[0]["answer"] == answer and "line 2" in result.stderr and "1 from a passage" in result.stderr

    streamed = runner.invoke(app, [*base, "How?", "--stream"])
    assert streamed.exit_code == 1 and "--stream does not work with --index" in streamed.output
    with_context = runner.invoke(app, [*base, "How?", "--context", "-"], input="A passage.")
    assert with_context.exit_code == 1 and "give --context or --index, not both" in with_context.output
    missing = runner.invoke(app, [*base[:2], "--index", str(tmp_path / "none.edgeqa-index"), "q"])
    assert missing.exit_code == 1 and "none.edgeqa-index" in missing.output and "Traceback" not in missing.output


def test_ask_context_reads_a_file_or_standard_input(artifact_tiny, model, tmp_path):
    passage = tmp_path / "passage.txt"
    passage.write_text("Ann wrote the report in May.", encoding="utf-8")
    expected = model.answer("Who wrote it?", context="Ann wrote the report in May.", **OPTS).text
    base = ["ask", str(artifact_tiny), "Who wrote it?", "--max-new-tokens", "6"]
    assert runner.invoke(app, [*base, "--context", str(passage)]).stdout.strip() == expected
    piped = runner.invoke(app, [*base, "--context", "-"], input="Ann wrote the report in May.")
    assert piped.stdout.strip() == expected
    long_passage = tmp_path / "long.txt"
    long_passage.write_text("word " * 400, encoding="utf-8")
    too_long = runner.invoke(app, [*base, "--context", str(long_passage)])
    assert too_long.exit_code == 1 and "over the model's limit of 128 input tokens" in too_long.output
    empty = runner.invoke(app, [*base, "--context", "-"], input="  \n")
    assert empty.exit_code == 1 and "is empty" in empty.output
    gone = runner.invoke(app, [*base, "--context", str(tmp_path / "nope.txt")])
    assert gone.exit_code == 1 and "nope.txt does not exist" in gone.output


def test_the_passage_is_in_the_prompt(model):
    with_passage = model.answer("Who wrote it?", context="Ann wrote the report in May.", **OPTS)
    other_passage = model.answer("Who wrote it?", context="Bob painted the fence in June.", **OPTS)
    alone = model.answer("Who wrote it?", **OPTS)
    assert with_passage.prompt_tokens > alone.prompt_tokens
    assert len({tuple(a.tokens) for a in (with_passage, other_passage, alone)}) == 3


def test_served_answers_from_the_index_are_documents_qas(artifact_tiny, model, index):
    from serve_helpers import in_process, openai_client

    questions = ["How do I reset the router?", "What does a red light mean?", "zebra"]
    with DocumentsQA(model, Index.open(index)) as qa:
        expected = [qa.ask(q, model.options(max_new_tokens=6)) for q in questions]

    async def body(app, http):
        answers = (await http.post("/v1/answer", json={"questions": questions, "max_new_tokens": 6})).json()
        for got, want in zip(answers["answers"], expected, strict=True):
            assert (got["answer"], got["source"], got["found"]) == (want.text, want.to_dict()["source"], want.found)
            assert [s["source"] for s in got["sources"]] == [c.passage.source for c in want.candidates]
            assert sum(s["chosen"] for s in got["sources"]) == (1 if want.found else 0)
            scores = ["reader_score", "retrieval_logprob", "joint_score"]
            assert [[s[key] for key in scores] for s in got["sources"]] == [
                [c.to_dict()[key] for key in scores] for c in want.candidates
            ]
            assert got["joint_score"] == want.to_dict()["joint_score"]
        own = await http.post("/v1/answer", json={"question": "Who?", "context": "Ann wrote it.", "max_new_tokens": 6})
        assert own.json()["answer"] == model.answer("Who?", context="Ann wrote it.", **OPTS).text
        streamed = await http.post("/v1/answer", json={"question": "router?", "stream": True})
        assert streamed.status_code == 400 and "stream" in streamed.json()["error"]["message"]
        too_long = await http.post("/v1/answer", json={"question": "Who?", "context": "word " * 400})
        assert too_long.status_code == 400 and "over the model's limit" in too_long.json()["error"]["message"]
        client = openai_client(http)
        chat = await client.chat.completions.create(
            model="edgeqa", messages=[{"role": "user", "content": questions[0]}], max_tokens=6
        )
        assert chat.choices[0].message.content == expected[0].text
        read = expected[0].candidates
        assert chat.usage.prompt_tokens == sum(c.prompt_tokens for c in read) > 0
        assert chat.usage.completion_tokens == expected[0].chosen.answer_tokens > 0
        assert [s["source"] for s in chat.model_extra["edgeqa_sources"]] == [
            c.passage.source for c in expected[0].candidates
        ]
        stream = await client.chat.completions.create(
            model="edgeqa", messages=[{"role": "user", "content": questions[0]}], max_tokens=6, stream=True
        )
        pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
        assert "".join(p for p in pieces if p) == expected[0].text
        info = (await http.get("/info")).json()
        assert info["index"]["passages"] == 3 and info["index"]["k"] == 4

    in_process(artifact_tiny, model, body, index=index)


def test_a_served_index_reads_with_the_servers_retrieval_weight_and_its_queue_share(artifact_tiny, model, index):
    """`serve --retrieval-weight 0` chooses as `DocumentsQA(retrieval_weight=0)`; a request that could never
    fit the queue (questions x k over --max-queue) is a 400 naming the cap, never a 503 at every retry."""
    from serve_helpers import in_process, openai_client

    questions = ["How do I reset the router?", "What does a red light mean?", "How do I descale the kettle?"]
    with DocumentsQA(model, Index.open(index), retrieval_weight=0.0) as qa:
        expected = [qa.ask(q, model.options(max_new_tokens=6)) for q in questions]

    async def body(app, http):
        info = (await http.get("/info")).json()
        assert (info["index"]["k"], info["index"]["retrieval_weight"]) == (4, 0.0)
        two = (await http.post("/v1/answer", json={"questions": questions[:2], "max_new_tokens": 6})).json()
        for got, want in zip(two["answers"], expected[:2], strict=True):
            assert (got["answer"], got["source"]) == (want.text, want.to_dict()["source"])
            assert all(s["joint_score"] == s["reader_score"] for s in got["sources"])
        three = await http.post("/v1/answer", json={"questions": questions, "max_new_tokens": 6})
        error = three.json()["error"]
        assert three.status_code == 400 and error["code"] == "over_cap" and error["param"] == "questions"
        assert "at most 2 a request (each is read from 4 passages)" in error["message"]
        own = await http.post("/v1/answer", json={"questions": questions, "context": "Ann wrote it."})
        assert own.status_code == 200  # read from the request's passage: one place each
        chat = await openai_client(http).chat.completions.create(
            model="edgeqa",
            messages=[{"role": "user", "content": "Who wrote it?"}],
            max_tokens=6,
            extra_body={"context": "Ann wrote the report in May."},
        )
        alone = model.answer("Who wrote it?", context="Ann wrote the report in May.", **OPTS)
        assert chat.choices[0].message.content == alone.text and "edgeqa_sources" not in (chat.model_extra or {})

    in_process(artifact_tiny, model, body, index=index, retrieval_weight=0.0, max_queue=8)
    with pytest.raises(ConfigError, match=r"k must be at most max_queue"):
        ServeConfig(artifact=artifact_tiny, index=index, k=9, max_queue=8)
    with pytest.raises(ConfigError, match=r"k is 0; read 1 to 100 passages"):  # ask --index's rule
        ServeConfig(artifact=artifact_tiny, index=index, k=0)


def test_the_search_runs_off_the_event_loop(artifact_tiny, model, index):
    """While a search is held in its worker thread, the server still answers /health."""
    import asyncio
    import threading

    from serve_helpers import in_process

    searching, release = threading.Event(), threading.Event()
    search_threads: list[threading.Thread] = []

    async def body(app, http):
        service = app.state.service
        search = service.index.search

        def held(question, k):
            search_threads.append(threading.current_thread())
            searching.set()
            release.wait(10)
            return search(question, k)

        service.index.search = held
        asked = asyncio.create_task(http.post("/v1/answer", json={"question": "router?", "max_new_tokens": 6}))
        assert await asyncio.to_thread(searching.wait, 10)
        health = await http.get("/health")  # answered while the search is still held
        assert health.status_code == 200 and not release.is_set()
        release.set()
        assert (await asked).status_code == 200
        assert search_threads and search_threads[0] is not threading.current_thread()  # not the loop's thread

    in_process(artifact_tiny, model, body, index=index)


def test_an_index_sized_with_another_tokenizer_is_named_with_the_fix(model, docs, artifact_tiny, tmp_path, caplog):
    other = another_tokenizer(artifact_tiny / "tokenizer.json", tmp_path / "tokenizer.json")
    path = tmp_path / "other.edgeqa-index"
    build_index([docs], path, other)
    with caplog.at_level("WARNING", logger="edgeqa.documents.reader"):
        DocumentsQA(model, Index.open(path)).close()
    [record] = caplog.records
    assert "sized with the tokenizer of" in record.message and f"--artifact {artifact_tiny}" in record.message
    caplog.clear()
    with caplog.at_level("WARNING", logger="edgeqa.documents.reader"):
        with DocumentsQA.open(artifact_tiny, index_of(docs, artifact_tiny, tmp_path)):
            pass
    assert not caplog.records  # sized for this reader: nothing to say
    too_long = tmp_path / "long.edgeqa-index"  # the bundled tokenizer's sizing (400), not this reader's input
    build_index([docs], too_long, artifact_tiny / "tokenizer.json", passage_tokens=400)
    with caplog.at_level("WARNING", logger="edgeqa.documents.reader"):
        DocumentsQA(model, Index.open(too_long)).close()
    [record] = caplog.records
    assert "holds passages of up to 400 tokens, this reader reads" in record.message
    assert f"--artifact {artifact_tiny}" in record.message


def index_of(docs: Path, artifact: Path, tmp_path: Path) -> Path:
    """An index sized for `artifact`, as `edgeqa index --artifact` sizes it."""
    from edgeqa.documents.sizing import resolve_sizing

    path = tmp_path / "same.edgeqa-index"
    sizing = resolve_sizing(artifact)
    build_index([docs], path, sizing.tokenizer, passage_tokens=sizing.passage_tokens)
    return path


def test_the_package_names_the_documents_api():
    import edgeqa

    assert edgeqa.DocumentsQA is DocumentsQA and edgeqa.Index is Index


def test_serve_index_behind_a_real_server(artifact_tiny, index):
    from openai import OpenAI
    from serve_helpers import ServerProcess

    process = ServerProcess(artifact_tiny, "--index", str(index), "--no-verify", "-k", "2")
    try:
        client = OpenAI(base_url=process.url + "/v1", api_key="unused", max_retries=0)
        chat = client.chat.completions.create(
            model="edgeqa", messages=[{"role": "user", "content": "How do I reset the router?"}], max_tokens=6
        )
        sources = chat.model_extra["edgeqa_sources"]
        assert len(sources) == 2 and sum(s["chosen"] for s in sources) == 1
        assert chat.choices[0].message.content == next(s["answer"] for s in sources if s["chosen"])
    finally:
        process.stop()


@pytest.mark.slow
def test_the_page_shows_each_answers_sources_in_a_real_browser(artifact_tiny, index, tmp_path):
    from serve_helpers import ServerProcess, headless_chromium, keep_screenshot

    with contextlib.ExitStack() as cleanup:
        driver = headless_chromium(tmp_path)  # first: where Chromium is missing it skips before a server starts
        cleanup.callback(driver.quit)
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        process = ServerProcess(artifact_tiny, "--index", str(index), "--no-verify", "--max-new-tokens", "6")
        cleanup.callback(process.stop)
        served = httpx_post(process.url + "/v1/answer", {"question": "What does a red light mean?"})
        driver.get(process.url + "/")
        WebDriverWait(driver, 20).until(lambda d: "your documents" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "question").send_keys("What does a red light mean?")
        driver.find_element(By.ID, "send").click()
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#sources li"))
        items = driver.find_elements(By.CSS_SELECTOR, "#sources li")
        assert driver.find_element(By.ID, "answer").text == served["answer"]
        assert driver.find_element(By.ID, "timings").text == "from " + served["source"]
        assert len(items) == len(served["sources"])
        chosen = driver.find_element(By.CSS_SELECTOR, "#sources li.chosen")
        snippet = next(source["snippet"] for source in served["sources"] if source["chosen"])
        assert served["source"] in chosen.text and snippet in chosen.text
        assert "score " in chosen.text and "retrieval " in chosen.text  # the choice's two halves shown
        keep_screenshot(driver, tmp_path, "serve-page-sources.png")
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors


def httpx_post(url: str, body: dict) -> dict:
    from serve_helpers import httpx

    reply = httpx.post(url, json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_a_reader_trained_on_passages_carries_its_template_to_the_artifact(tiny_model, tmp_path):
    """finetune --context-column -> the checkpoint's record -> export -> the manifest; the parity gate reads
    the held-out passages (float graphs: the same answers as PyTorch)."""
    pytest.importorskip("datasets")
    pytest.importorskip("optimum")
    from edgeqa.checkpoint import read_training_record
    from edgeqa.export import ExportConfig, export_artifact
    from edgeqa.finetune import FinetuneConfig, finetune

    template = "Passage: {context}\nQuestion: {question}"
    rows = [
        {"question": f"Who wrote note {i}?", "context": f"Note {i} was written by {name}.", "answer": name}
        for i, name in enumerate(["Ann", "Bob", "Cleo", "Dan"] * 4)
    ]
    data = tmp_path / "reading.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    run = finetune(
        FinetuneConfig(
            model=str(tiny_model),
            data=str(data),
            output_dir=tmp_path / "run",
            context_column="context",
            context_template=template,
            max_steps=4,
            eval_max_new_tokens=4,
            device="cpu",
        )
    )
    assert read_training_record(run.final_dir).context_template == template
    held = [json.loads(line) for line in (run.final_dir / "edgeqa_heldout.jsonl").read_text().splitlines()]
    assert held and all(row["context"].startswith("Note ") for row in held)
    result = export_artifact(
        ExportConfig(checkpoint=str(run.final_dir), output=tmp_path / "art", parity_samples=8, parity_max_new_tokens=4)
    )
    assert result.manifest.context_template == template
    assert result.parity is not None and result.parity.passed and result.parity.identical_answers == 1.0
    model = QAModel.load(tmp_path / "art")
    [(ids, _)] = model.decoder().prompts(["Who?"], ["Ann wrote it."])
    assert model.tokenizer.decode(ids) == "Passage: Ann wrote it. Question: Who?"


def _passage(rank: int, bm25: float | None = None) -> Passage:
    return Passage(
        id=rank,
        file=f"p{rank}.md",
        title="",
        heading="",
        start_line=1,
        end_line=2,
        unit="line",
        text=f"passage {rank}",
        rank=rank,
        score=10.0 - rank if bm25 is None else bm25,
    )


def test_the_choice_passes_over_readings_that_do_not_answer():
    p1, p2, p3 = _passage(1), _passage(2), _passage(3)
    surest_abstains = [
        Candidate(p1, "unanswerable", -0.01),
        Candidate(p2, "Oslo", -0.4),
        Candidate(p3, "", -0.001),
    ]
    answer = choose("q", surest_abstains)
    assert (answer.text, answer.source, answer.found) == ("Oslo", p2, True)
    assert choose("q", surest_abstains, no_answer="Unknown").text == "unanswerable"  # the artifact's own word
    level1, level2 = _passage(1, bm25=5.0), _passage(2, bm25=5.0)
    for weight in (1.0, 0.0):
        tie = choose("q", [Candidate(level1, "A", -0.5), Candidate(level2, "B", -0.5)], retrieval_weight=weight)
        assert tie.text == "A"  # a tie goes to the better BM25 rank
    none = choose("q", [Candidate(p1, " UNANSWERABLE ", -0.1), Candidate(p2, "", -0.2)])
    assert (none.text, none.source, none.found, len(none.candidates)) == (NOT_ANSWERED, None, False, 2)
    unread = [Candidate(p1, error="too long"), Candidate(p2, error="too long")]
    with pytest.raises(InputError, match="none of the 2 passages found could be read: too long"):
        choose("q", unread)
    unscored = choose("q", [Candidate(p1, "Paris", float("nan")), Candidate(p2, "Oslo", -3.0)])
    assert (unscored.text, unscored.candidates[0].joint) == ("Oslo", None)  # NaN is no score, not the best
    assert "no usable score (nan)" in unscored.candidates[0].error
    with pytest.raises(InputError, match=r"none of the 1 passages found could be read: .*no usable score \(None\)$"):
        choose("q", [Candidate(p1, "Paris")])  # the message says why, not nothing after its colon
    mixed = choose("q", [Candidate(p1, error="too long"), Candidate(p2, "B", -2.0)])
    assert mixed.source is p2


def test_retrieval_decides_between_pages_it_tells_apart_and_the_reader_where_bm25_nearly_ties():
    clear = [Candidate(_passage(1, bm25=20.0), "Paris", -0.5), Candidate(_passage(2, bm25=5.0), "Nairobi", -0.01)]
    assert choose("q", clear).text == "Paris"  # 15 nats of retrieval outweigh the reader's 0.49
    assert choose("q", clear, retrieval_weight=0.0).text == "Nairobi"  # the reader's score alone
    assert choose("q", clear, retrieval_weight=0.01).text == "Nairobi"  # 0.15 nat of retrieval: not enough
    close = [Candidate(_passage(1, bm25=10.0), "Paris", -0.9), Candidate(_passage(2, bm25=9.9), "Nairobi", -0.1)]
    answer = choose("q", close)
    assert answer.text == "Nairobi"  # 0.1 nat of retrieval against the reader's 0.8
    first, second = answer.candidates
    assert (first.retrieval, second.retrieval) == pytest.approx(
        (-math.log(1 + math.exp(-0.1)), -math.log(1 + math.exp(0.1)))
    )
    assert (first.joint, second.joint) == pytest.approx((-0.9 + first.retrieval, -0.1 + second.retrieval))
    data = answer.to_dict()
    assert data["joint_score"] == round(second.joint, 4) and data["reader_score"] == -0.1
    assert [(c["retrieval_logprob"], c["joint_score"]) for c in data["candidates"]] == [
        (round(c.retrieval, 4), round(c.joint, 4)) for c in answer.candidates
    ]
    declines = [
        Candidate(_passage(1, bm25=20.0), "unanswerable", -0.01),
        Candidate(_passage(2, bm25=1.0), "Oslo", -3.0),
    ]
    assert choose("q", declines).text == "Oslo"  # however clear retrieval is, a reading that declines is passed over
    nothing = choose("q", [Candidate(_passage(1, bm25=3.0), "unanswerable", -0.2), Candidate(_passage(2), error="x")])
    assert nothing.text == NOT_ANSWERED
    assert [c.retrieval is not None for c in nothing.candidates] == [True, True]  # --json shows them all
    assert [c.joint is not None for c in nothing.candidates] == [True, False]  # the unread one has no score


@pytest.mark.parametrize("weight", [-0.5, MAX_RETRIEVAL_WEIGHT + 1, float("nan"), float("inf"), True, "1"])
def test_a_retrieval_weight_out_of_range_is_refused_naming_the_range(weight, model, index):
    with pytest.raises(InputError, match=r"retrieval weight is .*; give 0 \(the reader's score alone\) to 100"):
        choose("q", [Candidate(_passage(1), "A", -0.1)], retrieval_weight=weight)
    with pytest.raises(InputError, match="retrieval weight is"):
        DocumentsQA(model, Index.open(index), retrieval_weight=weight)


def test_the_retrieval_weight_reaches_ask_and_serve(artifact_tiny, index):
    base = ["ask", str(artifact_tiny), "--index", str(index), "--max-new-tokens", "6", "How do I reset the router?"]
    alone = json.loads(runner.invoke(app, [*base, "--json", "--retrieval-weight", "0"]).stdout)
    assert all(c["joint_score"] == c["reader_score"] for c in alone["candidates"])
    doubled = json.loads(runner.invoke(app, [*base, "--json", "--retrieval-weight", "2"]).stdout)
    for c in doubled["candidates"]:
        assert c["joint_score"] == pytest.approx(c["reader_score"] + 2 * c["retrieval_logprob"], abs=2e-4)
    refused = runner.invoke(app, [*base, "--retrieval-weight", "-1"])
    assert refused.exit_code == 1 and "retrieval weight is -1.0; give 0" in refused.output
    served = runner.invoke(app, ["serve", str(artifact_tiny), "--index", str(index), "--retrieval-weight", "500"])
    assert served.exit_code == 1 and "retrieval weight is 500.0" in served.output and "Traceback" not in served.output


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=100))
def test_retrieval_logprobs_are_a_distribution_in_the_order_of_bm25(bm25):
    logprobs = retrieval_logprobs(bm25)
    assert all(math.isfinite(x) and x <= 1e-9 for x in logprobs)
    assert math.fsum(math.exp(x) for x in logprobs) == pytest.approx(1.0)
    in_bm25_order = [logprobs[i] for i in sorted(range(len(bm25)), key=bm25.__getitem__)]
    assert in_bm25_order == sorted(in_bm25_order)


@pytest.mark.slow
def test_a_person_asks_the_documents_at_a_terminal(artifact_tiny, index, tmp_path):
    """`edgeqa ask ART --index INDEX` in tmux: a question typed, its answer and source shown, Ctrl-D quits."""
    import sys
    import time

    from terminal import Tmux

    command = f"{sys.executable} -m edgeqa.cli ask {artifact_tiny} --index {index} --max-new-tokens 6 --no-verify"
    terminal = Tmux(f"edgeqa-{tmp_path.name}", command)
    try:
        terminal.wait_for("Ask about the documents in")
        terminal.send("How do I reset the router?", "Enter")
        shown = terminal.wait_for("source: ")
        with DocumentsQA.open(artifact_tiny, index) as qa:
            expected = qa.ask("How do I reset the router?", qa.model.options(max_new_tokens=6))
        assert expected.text in shown and expected.source.source in shown
        terminal.send("zebra quasar", "Enter")
        terminal.wait_for(NO_PASSAGE)
        terminal.send("C-d")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and terminal.alive():
            time.sleep(0.2)
        assert not terminal.alive()
    finally:
        terminal.close()

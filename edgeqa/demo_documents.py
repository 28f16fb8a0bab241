"""`edgeqa demo --documents`: answers from documents, offline, measured where memory cannot help.

The documents are one markdown page per country of a counterfactual world (`edgeqa.counterfactual`:
the capital of France may be Nairobi), so the only way to answer right is to read the right page.
The demo trains a demo-sized reader from scratch on other subjects' pages (fresh counterfactual
worlds of the train countries and city-named places, phrasings kept apart from the test ones),
exports it to int8 through the parity gate,
indexes the test world's pages and answers the held-out questions through retrieval
(`DocumentsQA`): exact match, the right source, and the same reader asked without the pages.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeqa.errors import ConfigError
from edgeqa.manifest import WeightType

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderRecipe:
    """How the demo trains its reader (measured in benchmarks/results/reader-recipe.md).

    Attributes:
        shape: `T5Config` sizes of the reader (FLAN-T5's vocabulary).
        tie_word_embeddings: One embedding for input and output (copying a passage's words is easier).
        dropout_rate: T5's dropout while training.
        relations: The relations the pages state and the questions ask.
        worlds: Fresh counterfactual worlds of the train countries the training records come from.
        open_vocabulary: Training worlds of `counterfactual.open_world`: city-named subjects beside the
            train countries, values drawn from all the tables' values (a reader from scratch only
            writes words it has written).
        sentence_steps: The first steps read only the sentence that states the asked relation
            (`counterfactual.relation_sentences`): copying first, then finding the sentence on the page.
        question_share: Share of question-writing records mixed in (`counterfactual.question_records`:
            the page in, a question it answers out).
        negative_share: Share of records asked of a page that does not say, answered `no_answer`
            (after the sentence steps).
        max_steps: Optimizer steps, the sentence steps included.
        batch_size: Records per step.
        learning_rate: AdamW's peak learning rate.
        max_source_tokens: The reader's input limit: a page and a question fit.
        eval_steps: Steps between evaluations (exact match on held-out phrasings picks the checkpoint).
    """

    shape: dict[str, int]
    tie_word_embeddings: bool
    dropout_rate: float
    relations: tuple[str, ...]
    worlds: int
    open_vocabulary: bool
    sentence_steps: int
    question_share: float
    negative_share: float
    max_steps: int
    batch_size: int
    learning_rate: float
    max_source_tokens: int
    eval_steps: int

    def __post_init__(self) -> None:
        if not 0 <= self.sentence_steps < self.max_steps:
            raise ConfigError(
                f"sentence_steps is {self.sentence_steps} of max_steps {self.max_steps}: the sentence steps come "
                "first and the reader ends on whole pages; give a sentence_steps from 0 to max_steps - 1"
            )


#: The best measured (benchmarks/results/reader-recipe.md): 13-14 minutes of training on 2 idle cores.
RECIPE = ReaderRecipe(
    shape=dict(d_model=128, d_kv=32, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4),
    tie_word_embeddings=False,
    dropout_rate=0.0,
    relations=("capital", "continent", "currency"),
    worlds=30,
    open_vocabulary=True,
    sentence_steps=1000,
    question_share=0.25,
    negative_share=0.0,
    max_steps=4000,
    batch_size=32,
    learning_rate=3e-3,
    max_source_tokens=128,
    eval_steps=1000,
)
#: Held-out questions answered through retrieval at the end (an evenly spaced sample).
TEST_QUESTIONS = 400
#: Validation records: held-out phrasings of train countries, for the checkpoint choice and the parity gate.
VALIDATION_RECORDS = 300


@dataclass(frozen=True)
class Asked:
    """One held-out question answered through retrieval."""

    question: str
    expected: str
    page: str
    answer: str
    source: str
    right_source: bool
    counterfactual: bool

    @property
    def correct(self) -> bool:
        from edgeqa.metrics import exact_match

        return exact_match([self.answer], [self.expected]) == 1.0


@dataclass(frozen=True)
class DocumentsDemoResult:
    """What the documents demo made and measured.

    Attributes:
        exact_match: Share of held-out questions answered exactly, through retrieval.
        counterfactual_exact_match: The same, over the questions whose page states a counterfactual value.
        right_source: Share whose answer was read from the question's own page.
        reader_choice_exact_match, reader_choice_right_source: The same two when the reader's score
            alone chooses among the passages read (`retrieval_weight=0`).
        top_passage_exact_match, top_passage_right_source: The same two reading only BM25's first
            passage (`k=1`): what retrieval alone gives the reader.
        passage_exact_match: The reader given the question's own page (no retrieval), by relation too.
        closed_book_exact_match: The same reader asked without passages (what its weights remember).
        train_seconds: Fine-tuning wall time; total_seconds: the whole demo's.
    """

    output: Path
    artifact: Path
    index: Path
    pages: Path
    asked: list[Asked]
    exact_match: float
    counterfactual_exact_match: float
    right_source: float
    reader_choice_exact_match: float
    reader_choice_right_source: float
    top_passage_exact_match: float
    top_passage_right_source: float
    passage_exact_match: dict[str, float]
    closed_book_exact_match: float
    train_seconds: float
    total_seconds: float
    parity_table: str
    history: list[dict[str, float]] = field(default_factory=list)


def write_data(folder: Path, recipe: ReaderRecipe, seed: int = 0) -> tuple[Any, list[dict[str, Any]], Path, Path]:
    """The test world (its pages in `folder/pages`), its held-out test records, and two training folders
    with train.jsonl (fresh worlds of the train countries) and validation.jsonl (their held-out
    phrasings): `data` reads whole pages, `sentences` the sentence of the asked relation."""
    from edgeqa.counterfactual import (
        build_world,
        records,
        relation_sentences,
        split_countries,
        train_records,
        write_pages,
    )

    train_names, test_names = split_countries(seed=seed)
    world = build_world(relations=recipe.relations, seed=seed, fillers=False)
    write_pages(world, folder / "pages")
    tests = records(world, "test", seed=seed, pages=set(test_names))

    def train(negative_share: float) -> list[dict[str, object]]:
        return train_records(
            train_names,
            recipe.worlds,
            recipe.relations,
            seed=seed,
            fillers=False,
            negative_share=negative_share,
            open_vocabulary=recipe.open_vocabulary,
            question_share=recipe.question_share,
        )

    other = build_world(train_names, recipe.relations, seed=seed + 500, fillers=False)
    held = records(other, "test", seed=seed + 1, pages=set(train_names))[:VALIDATION_RECORDS]
    pages, sentences = folder / "data", folder / "sentences"
    plain = train(0.0)
    _write_records(pages, "train", train(recipe.negative_share) if recipe.negative_share else plain)
    _write_records(pages, "validation", held)
    if recipe.sentence_steps:
        one = [row | {"context": relation_sentences(str(row["context"]), str(row["relation"]))} for row in plain]
        _write_records(sentences, "train", one)
        _write_records(sentences, "validation", held)
    return world, tests, pages, sentences


def _write_records(folder: Path, split: str, rows: list[dict[str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            record = {"question": row["question"], "context": row["context"], "answer": row["answer"]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def run_documents_demo(
    output: Path,
    recipe: ReaderRecipe = RECIPE,
    max_steps: int | None = None,
    test_questions: int = TEST_QUESTIONS,
    force: bool = False,
    progress_bars: bool = False,
) -> DocumentsDemoResult:
    """Write the pages, train the reader, export it to int8 through the gate, index the pages, answer.

    Raises:
        ConfigError: a setting `edgeqa.demo.prepare_output` refuses.
    """
    from edgeqa.counterfactual import page_body
    from edgeqa.demo import every_steps, prepare_output, require_pipeline

    require_pipeline()
    from edgeqa.documents import DocumentsQA, Index, build_index, choose
    from edgeqa.documents.sizing import resolve_sizing
    from edgeqa.export import ExportConfig, export_artifact
    from edgeqa.finetune import FinetuneConfig, finetune
    from edgeqa.finetune.models import build_random_t5
    from edgeqa.runtime import QAModel

    started = time.perf_counter()
    output = prepare_output(output, force, max_steps=(max_steps, 1))
    steps = recipe.max_steps if max_steps is None else max_steps
    logger.info("demo 1/5: a counterfactual world, one page per country, and reading records of other countries")
    world, tests, data, sentences = write_data(output, recipe)
    first = round(steps * recipe.sentence_steps / recipe.max_steps)
    logger.info(
        "demo 2/5: a reader from scratch (random weights: none can be downloaded), %d steps (%d on single sentences)",
        steps,
        first,
    )
    model: Path | str = build_random_t5(
        output / "base-model",
        initializer_factor=0.5,
        tie_word_embeddings=recipe.tie_word_embeddings,
        dropout_rate=recipe.dropout_rate,
        **recipe.shape,
    )
    training_started = time.perf_counter()
    # (data, steps, run folder, steps between evaluations): the sentence phase is evaluated once, at its
    # end, so that the page phase goes on from its last weights
    phases = [
        (sentences, first, output / "run-sentences", first),
        (data, steps - first, output / "run", min(recipe.eval_steps, steps - first)),
    ]
    for folder, phase_steps, run_dir, every in [phase for phase in phases if phase[1] > 0]:
        run = finetune(
            FinetuneConfig(
                model=str(model),
                data=str(folder),
                output_dir=run_dir,
                context_column="context",
                max_source_tokens=recipe.max_source_tokens,
                max_target_tokens=32,
                epochs=1000,
                max_steps=phase_steps,
                learning_rate=recipe.learning_rate,
                batch_size=recipe.batch_size,
                eval_batch_size=100,
                max_eval_samples=VALIDATION_RECORDS,
                eval_max_new_tokens=16,
                logging_steps=50,
                save_total_limit=1,
                overwrite=True,
            ),
            trainer_overrides=every_steps(every, "exact_match"),
            progress_bars=progress_bars,
        )
        model = run.final_dir
    train_seconds = time.perf_counter() - training_started
    logger.info("demo 3/5: exporting the reader to int8 ONNX through the parity gate (on passages)")
    artifact = output / "reader-int8"
    exported = export_artifact(
        ExportConfig(
            checkpoint=str(run.final_dir),
            output=artifact,
            quantize=WeightType.INT8,
            parity_data=data / "validation.jsonl",
            parity_samples=VALIDATION_RECORDS,
            parity_max_new_tokens=16,
            force=True,
        )
    )
    logger.info("demo 4/5: indexing the %d pages", len(world.pages))
    index = output / "pages.edgeqa-index"
    sizing = resolve_sizing(artifact=artifact)  # as `edgeqa index --artifact` sizes passages
    build_index(
        [output / "pages"], index, sizing.tokenizer, sizing.passage_tokens, tokenizer_name=sizing.tokenizer_name
    )
    logger.info("demo 5/5: answering held-out questions through retrieval (CPU runtime, no torch)")
    picked = tests[:: max(1, len(tests) // test_questions)][:test_questions]
    reader = QAModel.load(artifact)
    with DocumentsQA(reader, Index.open(index)) as qa:
        answers = qa.ask_batch([str(row["question"]) for row in picked], reader.options(max_new_tokens=16))
        top_answers = qa.ask_batch([str(row["question"]) for row in picked], reader.options(max_new_tokens=16), k=1)
    questions = [str(row["question"]) for row in picked]
    pages = [page_body(world.pages[str(row["page"])]) for row in picked]
    read = reader.answer_batch(questions, batch_size=32, contexts=pages, max_new_tokens=16)
    closed = reader.answer_batch(questions, batch_size=32, max_new_tokens=16)
    top = [_asked(row, answer) for row, answer in zip(picked, top_answers, strict=True)]
    asked = [_asked(row, answer) for row, answer in zip(picked, answers, strict=True)]
    by_reader = [
        _asked(row, choose(a.question, a.candidates, reader.manifest.no_answer, retrieval_weight=0.0))
        for row, a in zip(picked, answers, strict=True)
    ]
    from edgeqa.metrics import exact_match

    swapped = [a for a in asked if a.counterfactual]
    return DocumentsDemoResult(
        output=output,
        artifact=artifact,
        index=index,
        pages=output / "pages",
        asked=asked,
        exact_match=_share(a.correct for a in asked),
        counterfactual_exact_match=_share(a.correct for a in swapped),
        right_source=_share(a.right_source for a in asked),
        reader_choice_exact_match=_share(a.correct for a in by_reader),
        reader_choice_right_source=_share(a.right_source for a in by_reader),
        top_passage_exact_match=_share(a.correct for a in top),
        top_passage_right_source=_share(a.right_source for a in top),
        passage_exact_match=_by_relation(picked, [a.text for a in read]),
        closed_book_exact_match=exact_match([a.text for a in closed], [str(row["answer"]) for row in picked]),
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started,
        parity_table=exported.parity.table() if exported.parity else "",
        history=run.history,
    )


def _asked(row: dict[str, Any], answer: Any) -> Asked:
    return Asked(
        question=str(row["question"]),
        expected=str(row["answer"]),
        page=str(row["page"]),
        answer=answer.text,
        source=answer.source.source if answer.source else "",
        right_source=answer.source is not None and answer.source.title == row["page"],
        counterfactual=bool(row["counterfactual"]),
    )


def _by_relation(rows: list[dict[str, Any]], answers: list[str]) -> dict[str, float]:
    """Exact match of `answers` over all rows ("all") and by the rows' relation."""
    from edgeqa.metrics import exact_match

    groups: dict[str, list[int]] = {"all": list(range(len(rows)))}
    for i, row in enumerate(rows):
        groups.setdefault(str(row["relation"]), []).append(i)
    return {
        name: exact_match([answers[i] for i in members], [str(rows[i]["answer"]) for i in members])
        for name, members in groups.items()
    }


def _share(flags: Any) -> float:
    values = list(flags)
    return sum(values) / max(1, len(values))


def documents_summary(result: DocumentsDemoResult, shown: int = 5) -> str:
    """What `edgeqa demo --documents` prints on stdout: the gate, the measures, a few answers, next commands."""
    questions = len(result.asked)
    lines = [
        "Parity of the int8 reader against the PyTorch model (held-out phrasings, with their pages):",
        result.parity_table,
        f"held-out questions through retrieval ({questions}, countries and phrasings never trained on):",
        f"  top 4 passages, reader and retrieval scores joined: exact match {result.exact_match * 100:.1f}% "
        f"(on counterfactual pages {result.counterfactual_exact_match * 100:.1f}%), "
        f"right source {result.right_source * 100:.1f}%",
        f"  top 4 passages, the reader's score alone: exact match {result.reader_choice_exact_match * 100:.1f}%, "
        f"right source {result.reader_choice_right_source * 100:.1f}%",
        f"  BM25's first passage only (-k 1): exact match {result.top_passage_exact_match * 100:.1f}%, "
        f"right source {result.top_passage_right_source * 100:.1f}%",
        "  the reader given each question's own page: exact match "
        + ", ".join(f"{name} {share * 100:.1f}%" for name, share in result.passage_exact_match.items()),
        f"  the same reader without the pages: exact match {result.closed_book_exact_match * 100:.1f}%",
        f"  trained for {result.train_seconds / 60:.1f} min; the whole demo {result.total_seconds / 60:.1f} min",
        "",
    ]
    for asked in result.asked[:shown]:
        verdict = "right" if asked.correct else f"wrong, the page says {asked.expected}"
        lines.append(f"  {asked.question} -> {asked.answer}  ({verdict}; {asked.source})")
    artifact, index = result.artifact, result.index
    lines += [
        "",
        f"everything is in {result.output} (pages in {result.pages}); next:",
        f'  edgeqa ask {artifact} --index {index} "What is the capital of {result.asked[0].page}?"',
        f'  edgeqa ask {artifact} --index {index} "What currency is used in France?" --json',
        f"  edgeqa serve {artifact} --index {index}",
    ]
    return "\n".join(lines)

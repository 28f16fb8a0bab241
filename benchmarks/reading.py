"""The reading benchmark: what `edgeqa ask --index` makes the reader do, against CTranslate2 and PyTorch.

    python -m edgeqa.bench.reading                          # small and base shapes, 5 rounds
    python -m edgeqa.bench.reading --shapes small --rounds 3 --output bench-results/reading.md

A documents question reads the top 4 passages (up to 400 tokens each) in one batch, prompted with
the reading template (`edgeqa.prompt.CONTEXT_TEMPLATE`), and keeps the answer with the best score.
Here the passages are real prose (the bundled QA answers, packed into passages by the indexer's own
splitter), the question one whose top 4 passages in an index of those answers are the ones read
(`edgeqa.bench.reading_index`), the models the benchmark's FLAN-T5-shaped ones
(`edgeqa.bench.shapes`: seeded random weights, the same checkpoint for every engine). Each engine
runs in its own process, kept loaded (`edgeqa.bench.reading_worker`), and the engines take turns
round by round (a different one first each round), so that a busy machine slows them alike. Each
turn measures, on the same token ids:

- prompt: the batch's encoder and its first answer token (CTranslate2 cannot run its encoder alone);
- read: the encoder and exactly `--new-tokens` greedy tokens for each passage (random weights never
  end an answer: the end is forbidden before the limit, as in `edgeqa bench`), with each answer's
  score where the engine gives one;
- ask (edgeqa only; the others have no index): `DocumentsQA.ask` of the question, what `edgeqa ask
  --index` does once loaded: the search, the same read of the same token ids, the choice.

The ratios are edgeqa's median over each engine's median, CTranslate2 at its better thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from edgeqa.bench.run import label, split_engine
from edgeqa.errors import ConfigError
from edgeqa.manifest import Manifest

ENGINES = ("edgeqa-int8", "edgeqa-int8@1", "ctranslate2@1", "ctranslate2@2", "pytorch")
GOAL = 0.8  # edgeqa's reading time at most this share of CTranslate2's
MODES = ("prompt", "read")
ASK = "ask"  # edgeqa's whole `DocumentsQA.ask`, timed after its read in the same turn


@dataclass(frozen=True)
class ReadingConfig:
    """What the reading benchmark measures.

    Attributes:
        shapes: Model shapes (small, base).
        engines: `edgeqa-int8`, `ctranslate2@N`, `pytorch` (`@N`: N threads, else `threads`).
        passages: Passages read together (the documents' top k).
        passage_tokens: Passage budget, in the reader's tokens (the indexer's default).
        new_tokens: Forced answer length.
        threads: Threads for every engine without `@N`.
        rounds: Rounds; in each, every engine takes one turn.
        reps: Batches timed per mode in a turn.
        scored: Ask every engine for the answers' scores.
        settle_s: Pause between turns, so that one engine's spinning threads are idle before the next starts.
        cache: Where the benchmark models are built.
    """

    shapes: tuple[str, ...] = ("small", "base")
    engines: tuple[str, ...] = ENGINES
    passages: int = 4
    passage_tokens: int = 400
    new_tokens: int = 16
    threads: int = 2
    rounds: int = 5
    reps: int = 2
    scored: bool = True
    settle_s: float = 0.5
    cache: Path = Path(tempfile.gettempdir()) / "edgeqa-bench-cache"

    def __post_init__(self) -> None:
        if min(self.passages, self.new_tokens, self.threads, self.rounds, self.reps) < 1:
            raise ConfigError("passages, new_tokens, threads, rounds and reps must each be at least 1")
        if self.new_tokens < 2:
            raise ConfigError("new_tokens must be at least 2 (a decoder step is read minus prompt)")
        unknown = [e for e in self.engines if split_engine(e)[0] not in ("edgeqa-int8", "ctranslate2", "pytorch")]
        if unknown:
            raise ConfigError(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")


def reading_passages(tokenizer_path: Path, count: int, passage_tokens: int) -> tuple[list[str], list[int]]:
    """`count` passages of the bundled validation answers, split and packed by the indexer's splitter, and
    their sizes in tokens; the fullest ones are taken, as a search over real documents mostly returns full
    passages."""
    from tokenizers import Tokenizer

    from edgeqa.bench.reading_index import bundled_answers
    from edgeqa.documents.formats import Document, block_from_lines
    from edgeqa.documents.split import count_tokens, default_overlap, split_document

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    blocks = [block_from_lines([(n, answer)], "", 0) for n, answer in enumerate(bundled_answers(), start=1)]
    pieces = split_document(Document("qa", blocks), tokenizer, passage_tokens, default_overlap(passage_tokens))
    sized = sorted(((count_tokens(tokenizer, p.text), i) for i, p in enumerate(pieces)), reverse=True)[:count]
    if len(sized) < count:
        raise ConfigError(f"the bundled data gives {len(sized)} passages; ask for at most that many")
    in_order = sorted(sized, key=lambda s: s[1])
    return [pieces[i].text for _, i in in_order], [size for size, _ in in_order]


def reading_prompts(tokenizer_path: Path, count: int, passage_tokens: int) -> tuple[list[list[int]], list[int]]:
    """`count` reading prompts as token ids, a different bundled question for each passage, and the
    passages' sizes."""
    from edgeqa.records import read_records, sample_data

    texts, sizes = reading_passages(tokenizer_path, count, passage_tokens)
    questions = [r.question for r in read_records(sample_data("validation")) if len(r.question) < 80][:count]
    if len(questions) < count:
        raise ConfigError(f"the bundled data gives {len(questions)} short questions; ask for at most that many")
    return passage_prompts(tokenizer_path, texts, questions), sizes


def passage_prompts(tokenizer_path: Path, passages: list[str], questions: list[str]) -> list[list[int]]:
    """Each passage with its question in `CONTEXT_TEMPLATE`, as token ids."""
    from tokenizers import Tokenizer

    from edgeqa.prompt import CONTEXT_TEMPLATE, format_prompt

    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    prompts = [
        format_prompt(q, context=t, context_template=CONTEXT_TEMPLATE) for t, q in zip(passages, questions, strict=True)
    ]
    return [tokenizer.encode(prompt).ids for prompt in prompts]


def reader_artifact(artifact: Path, target: Path, max_input_tokens: int) -> Path:
    """The artifact as a reader is exported for documents: the same files, a larger input limit.

    The benchmark's artifacts keep the question prompt's limit (128); `edgeqa export --max-input-tokens
    512` writes the same graphs with this manifest (the graphs take any length), without exporting again.
    """
    manifest = Manifest.read(artifact)
    if manifest.max_input_tokens >= max_input_tokens:
        return artifact
    if (target / "manifest.json").exists() and Manifest.read(target).max_input_tokens >= max_input_tokens:
        return target
    import shutil

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for entry in manifest.files.values():
        try:
            os.link(artifact / entry.path, target / entry.path)
        except OSError:
            shutil.copy2(artifact / entry.path, target / entry.path)
    replace(manifest, max_input_tokens=max_input_tokens).write(target)
    return target


class EngineProcess:
    """One engine's worker process, loaded once and sent one command a turn."""

    def __init__(
        self,
        engine: str,
        path: Path,
        tokenizer: Path,
        prompts: list[list[int]],
        config: ReadingConfig,
        ask: dict[str, Any] | None = None,
    ):
        name, threads = split_engine(engine)
        spec: dict[str, Any] = {
            "engine": {"edgeqa-int8": "edgeqa"}.get(name, name),
            "path": str(path),
            "tokenizer": str(tokenizer),
            "prompts": prompts,
            "new_tokens": config.new_tokens,
            "threads": threads or config.threads,
            "scored": config.scored,
        }
        if ask is not None:
            spec["ask"] = ask
        self.modes = MODES + ((ASK,) if ask is not None else ())
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        self.spec_path = Path(f.name)
        self.engine = engine
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgeqa.bench.reading_worker", f.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reply()  # loaded and warmed up

    def run(self, mode: str, reps: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"mode": mode, "reps": reps}) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None and self.process.stderr is not None
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            raise RuntimeError(f"{self.engine} failed:\n{self.process.stderr.read()[-3000:]}")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=60)
        self.spec_path.unlink(missing_ok=True)


@dataclass
class ShapeResult:
    """One shape's samples: engine -> mode -> each round's times (ms), and what the engines answered.

    `ask` describes the index and question of edgeqa's `ask` mode (`question`, `index_passages`, and per
    engine `same_ids`: the ask read the very token ids of the read, and `answer_tokens`: each passage's
    answer length in its last ask); `ask_parts` holds the ask's steps timed apart (search, prompts,
    read, choice; ms).
    """

    prompt_tokens: list[int]
    passage_tokens: list[int]
    times: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    encoder_ms: dict[str, list[float]] = field(default_factory=dict)
    profile: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    tokens: dict[str, list[list[int]]] = field(default_factory=dict)
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)
    ask: dict[str, Any] = field(default_factory=dict)
    ask_parts: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def median(self, engine: str, mode: str) -> float:
        return statistics.median(t for round_ in self.times[engine][mode] for t in round_)

    def best_ct2(self, mode: str) -> str | None:
        ct2 = [e for e in self.times if e.startswith("ctranslate2")]
        return min(ct2, key=lambda e: self.median(e, mode)) if ct2 else None

    def round_ratios(self, engine: str, other: str, mode: str, other_mode: str | None = None) -> list[float]:
        """The ratio of the two engines' medians in each round (a round's turns are minutes apart at most)."""
        return [
            statistics.median(a) / statistics.median(b)
            for a, b in zip(self.times[engine][mode], self.times[other][other_mode or mode], strict=True)
        ]

    def part(self, engine: str, step: str) -> float:
        """The median time (ms) of one step of edgeqa's ask (search, prompts, read, choice)."""
        return statistics.median(p[step] for p in self.ask_parts[engine])

    def asked(self) -> list[str]:
        """The engines timed asking the index (edgeqa's)."""
        return [e for e, modes in self.times.items() if modes.get(ASK)]


def measure(
    models: dict[str, Path],
    tokenizer: Path,
    prompts: list[list[int]],
    config: ReadingConfig,
    log=None,
    ask: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every engine in `models` (engine -> model path) on the same prompts, round by round; edgeqa's
    engines also ask `ask["question"]` of the index `ask["index"]` when `ask` is given."""
    processes = {}
    try:
        for engine, path in models.items():
            asks = ask if engine.startswith("edgeqa") else None
            processes[engine] = EngineProcess(engine, path, tokenizer, prompts, config, asks)
        names = list(processes)
        times: dict[str, dict[str, list[list[float]]]] = {e: {m: [] for m in processes[e].modes} for e in names}
        ask_parts: dict[str, list[dict[str, float]]] = {}
        same_ids: dict[str, bool] = {}
        answer_tokens: dict[str, list[int]] = {}
        encoder: dict[str, list[float]] = {}
        profile: dict[str, list[dict[str, float]]] = {}
        answers: dict[str, dict[str, Any]] = {}
        load = []
        for round_ in range(config.rounds):
            for engine in names[round_ % len(names) :] + names[: round_ % len(names)]:
                time.sleep(config.settle_s)
                load.append(os.getloadavg()[0])
                for mode in processes[engine].modes:
                    reply = processes[engine].run(mode, config.reps)
                    times[engine][mode].append(reply["ms"])
                    if "encoder_ms" in reply:
                        encoder.setdefault(engine, []).extend(reply["encoder_ms"])
                    if mode == ASK:
                        ask_parts.setdefault(engine, []).extend(reply["parts"])
                        same_ids[engine] = reply["same_ids"] and same_ids.get(engine, True)
                        answer_tokens[engine] = reply["answer_tokens"]
                    if mode == "read":
                        if any(reply["timings"]):
                            profile.setdefault(engine, []).extend(reply["timings"])
                        answers[engine] = reply
                if log:
                    log(f"round {round_ + 1}, {engine}: read {statistics.median(times[engine]['read'][-1]):.0f} ms")
    finally:
        for process in processes.values():
            process.close()
    return {
        "times": times,
        "encoder_ms": encoder,
        "profile": profile,
        "tokens": {e: a["tokens"] for e, a in answers.items()},
        "scores": {e: a["scores"] for e, a in answers.items()},
        "load": load,
        "ask_parts": ask_parts,
        "ask": {"same_ids": same_ids, "answer_tokens": answer_tokens} if ask else {},
    }


def run_shape(name: str, paths: dict[str, Path], config: ReadingConfig, log=None) -> ShapeResult:
    """One shape: `paths` holds `checkpoint`, `int8` and (for CTranslate2) `ct2`, as `shapes.prepare` returns."""
    from edgeqa.bench.reading_index import build_reading_index, keyword_question

    tokenizer = paths["int8"] / "tokenizer.json"
    reader = reader_artifact(paths["int8"], paths["int8"].parent / f"{paths['int8'].name}-reader", 512)
    index, index_passages = build_reading_index(reader.parent / "reading-index", tokenizer, config.passage_tokens)
    passages, sizes = reading_passages(tokenizer, config.passages, config.passage_tokens)
    question = keyword_question(index, passages)  # `edgeqa ask --index` asks one question of its top passages
    prompts = passage_prompts(tokenizer, passages, [question] * len(passages))
    ask = {"index": str(index), "question": question, "k": config.passages}
    where = {"edgeqa-int8": reader, "ctranslate2": paths.get("ct2"), "pytorch": paths.get("checkpoint")}
    models: dict[str, Path] = {}
    for engine in config.engines:
        path = where[split_engine(engine)[0]]
        if path is not None:
            models[engine] = path
    result = ShapeResult(prompt_tokens=[len(p) for p in prompts], passage_tokens=sizes)
    for key, value in measure(models, tokenizer, prompts, config, log, ask).items():
        setattr(result, key, value)
    result.ask |= {"question": question, "index_passages": index_passages}
    return result


def available(engine: str) -> bool:
    from importlib.util import find_spec

    needs = {"pytorch": ("torch", "transformers"), "ctranslate2": ("ctranslate2",)}.get(split_engine(engine)[0], ())
    return all(find_spec(module) is not None for module in needs)


def main(argv: list[str] | None = None) -> None:
    from edgeqa.bench.machine import cpu_name
    from edgeqa.bench.shapes import SHAPES, prepare
    from edgeqa.cpu import physical_cores

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ReadingConfig()
    parser.add_argument("--shapes", nargs="+", default=list(defaults.shapes), choices=SHAPES)
    parser.add_argument("--engines", nargs="+", default=list(defaults.engines))
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--reps", type=int, default=defaults.reps)
    parser.add_argument("--new-tokens", type=int, default=defaults.new_tokens)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--no-scores", action="store_true", help="do not ask the engines for answer scores")
    parser.add_argument("--cache", type=Path, default=defaults.cache)
    parser.add_argument("--output", type=Path, default=Path("bench-results/reading.md"))
    parser.add_argument("--render", type=Path, help="only write the report of a run's JSON (OUTPUT.json) again")
    args = parser.parse_args(argv)
    from edgeqa.bench.reading_report import write_report

    if args.render:
        write_report(json.loads(args.render.read_text()), args.output)
        return
    config = ReadingConfig(
        shapes=tuple(args.shapes),
        engines=tuple(args.engines),
        rounds=args.rounds,
        reps=args.reps,
        new_tokens=args.new_tokens,
        threads=args.threads,
        scored=not args.no_scores,
        cache=args.cache,
    )
    engines = tuple(e for e in config.engines if available(e))
    skipped = [e for e in config.engines if e not in engines]
    config = replace(config, engines=engines)

    def log(message: str) -> None:
        print(f"reading: {message}", file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    started = time.time()
    results = {}
    for shape in config.shapes:
        paths = prepare(
            shape, config.cache, ctranslate2=any(e.startswith("ctranslate2") for e in engines), optimum=False
        )
        results[shape] = run_shape(shape, paths, config, log)
    load_after = os.getloadavg()
    header = [
        f"`python -m edgeqa.bench.reading {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(" `", "`"),
        f"on {cpu_name()} ({physical_cores()} cores), {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}, "
        f"{(time.time() - started) / 60:.0f} min; load average "
        f"{'/'.join(f'{x:.2f}' for x in load_before)} before, {'/'.join(f'{x:.2f}' for x in load_after)} after.",
        *(f"{label(e)} skipped: not installed" for e in skipped),
    ]
    data = {
        "header": header,
        "config": asdict(config) | {"cache": str(config.cache)},
        "shapes": {shape: asdict(r) for shape, r in results.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(data, indent=1))
    write_report(data, args.output)


if __name__ == "__main__":
    main()

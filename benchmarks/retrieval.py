"""Retrieval benchmark: `edgeqa index` build throughput and `Index.search` latency at 10k and 100k passages.

The corpus is synthetic but made of real text: one markdown page per country of the bundled facts world
(its facts as sentences, the cities in it), filled out with sentences drawn from the bundled QA answers
(Dolly open QA, written by people), so the vocabulary and its word frequencies are those of English prose.
Questions are the bundled QA questions and facts questions ("What is the capital of Chad?").

Run: python -m edgeqa.bench.retrieval [--sizes 10000,100000] [--passage-tokens 400] [-o results.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from edgeqa.documents import Index, build_index, query
from edgeqa.documents.query import CANDIDATES
from edgeqa.documents.sizing import bundled_tokenizer

#: Sentences of filler per section of a page; a page has a few sections.
SECTION_SENTENCES = (6, 30)


@dataclass(frozen=True)
class RetrievalResult:
    """One corpus size: how fast it was indexed and how fast it answers."""

    target_passages: int
    passages: int
    files: int
    megabytes: float
    build_seconds: float
    build_cpu_seconds: float
    build_mb_per_s: float
    passages_per_s: float
    index_megabytes: float
    queries: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_p50_ms: float
    cpu_p95_ms: float
    empty_results: int
    all_words_p50_ms: float
    all_words_p95_ms: float
    all_words_cpu_p50_ms: float
    all_words_cpu_p95_ms: float


def _assets() -> Path:
    import edgeqa

    return Path(edgeqa.__file__).resolve().parent / "assets"


def _sentences() -> list[str]:
    """Sentences of the bundled QA answers (prose written by people)."""
    pool: list[str] = []
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl"):
        for line in (_assets() / "qa" / name).read_text(encoding="utf-8").splitlines():
            answer = json.loads(line).get("answer", "")
            pool.extend(s.strip() for s in re.split(r"(?<=[.!?])\s+", answer) if len(s.split()) >= 4)
    return pool


def _countries() -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    with open(_assets() / "facts" / "countries.csv", encoding="utf-8") as f:
        countries = list(csv.DictReader(f))
    cities: dict[str, list[str]] = {}
    with open(_assets() / "facts" / "cities.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            cities.setdefault(row["country"], []).append(row["name"])
    return countries, cities


def write_corpus(folder: Path, megabytes: float, seed: int = 0) -> int:
    """Write markdown pages (one per country, repeated with new filler) until `megabytes` of text; returns files."""
    rng = random.Random(seed)
    pool = _sentences()
    countries, cities = _countries()
    folder.mkdir(parents=True, exist_ok=True)
    written, files = 0, 0
    while written < megabytes * 1e6:
        country = countries[files % len(countries)]
        name = country["name"]
        facts = (
            f"{name} is a country in {country['continent']}. The capital of {name} is {country['capital']}. "
            f"People in {name} pay in the {country['currency'] or 'local currency'}. "
            f"Its internet domain is {country['tld'] or 'none'} and about {country['population']} people live there."
        )
        sections = [f"# {name} (volume {files // len(countries) + 1})", "", facts, ""]
        for heading in ("History", "Economy", "Culture", "Places"):
            sections += [f"## {heading}", ""]
            for _ in range(rng.randint(1, 4)):
                count = rng.randint(*SECTION_SENTENCES)
                sections += [" ".join(rng.choice(pool) for _ in range(count)), ""]
            if heading == "Places" and cities.get(name):
                sections += [f"Cities of {name} include {', '.join(cities[name][:8])}.", ""]
        text = "\n".join(sections)
        (folder / f"{files:06d}-{re.sub(r'[^A-Za-z]+', '-', name)}.md").write_text(text, encoding="utf-8")
        written += len(text.encode("utf-8"))
        files += 1
    return files


def questions(count: int, seed: int = 0) -> list[str]:
    """Natural questions: the bundled QA questions and facts questions, shuffled."""
    rng = random.Random(seed)
    asked = [json.loads(line)["question"] for line in (_assets() / "qa" / "test.jsonl").read_text().splitlines()]
    countries, _ = _countries()
    templates = ("What is the capital of {}?", "Which currency is used in {}?", "On which continent is {}?")
    asked += [rng.choice(templates).format(c["name"]) for c in countries]
    rng.shuffle(asked)
    return (asked * (count // len(asked) + 1))[:count]


class _Timings:
    """Wall and CPU milliseconds of searches."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.empty = 0

    def add(self, index: Index, question: str) -> None:
        t, c = time.perf_counter(), time.thread_time()
        hits = index.search(question, k=4)
        self.wall.append((time.perf_counter() - t) * 1000)
        self.cpu.append((time.thread_time() - c) * 1000)
        self.empty += not hits

    @staticmethod
    def cut(values: list[float], percent: int) -> float:
        return round(statistics.quantiles(values, n=100)[percent - 1], 2)


def measure(target: int, work: Path, passage_tokens: int, queries: int, mb_per_passage: float) -> RetrievalResult:
    """Build an index of about `target` passages from a fresh corpus, then time `queries` searches (k=4)."""
    corpus, index = work / f"corpus-{target}", work / f"index-{target}.db"
    files = write_corpus(corpus, target * mb_per_passage)
    megabytes = sum(p.stat().st_size for p in corpus.iterdir()) / 1e6
    started, cpu_started = time.perf_counter(), time.process_time()  # process time: the tokenizer's threads too
    summary = build_index([corpus], index, bundled_tokenizer(), passage_tokens=passage_tokens)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    with Index.open(index) as ix:
        asked = questions(queries + 50)
        for question in asked[:50]:  # warm the page cache and the statement cache
            ix.search(question, k=4)
        timed = {"pruned": _Timings(), "all words": _Timings()}
        for question in asked[50:]:  # the two ways alternate, so that both see the same load
            for way, timings in timed.items():
                query.CANDIDATES = CANDIDATES if way == "pruned" else 1 << 62
                timings.add(ix, question)
        query.CANDIDATES = CANDIDATES
    pruned, every = timed["pruned"], timed["all words"]
    result = RetrievalResult(
        target_passages=target,
        passages=summary.passages,
        files=files,
        megabytes=round(megabytes, 1),
        build_seconds=round(seconds, 1),
        build_cpu_seconds=round(cpu_seconds, 1),
        build_mb_per_s=round(megabytes / seconds, 2),
        passages_per_s=round(summary.passages / seconds),
        index_megabytes=round(index.stat().st_size / 1e6, 1),
        queries=len(pruned.wall),
        p50_ms=pruned.cut(pruned.wall, 50),
        p95_ms=pruned.cut(pruned.wall, 95),
        p99_ms=pruned.cut(pruned.wall, 99),
        cpu_p50_ms=pruned.cut(pruned.cpu, 50),
        cpu_p95_ms=pruned.cut(pruned.cpu, 95),
        empty_results=pruned.empty,
        all_words_p50_ms=every.cut(every.wall, 50),
        all_words_p95_ms=every.cut(every.wall, 95),
        all_words_cpu_p50_ms=every.cut(every.cpu, 50),
        all_words_cpu_p95_ms=every.cut(every.cpu, 95),
    )
    shutil.rmtree(corpus)
    index.unlink()
    return result


def calibrate(work: Path, passage_tokens: int) -> float:
    """Megabytes of corpus per passage at this passage size, from a small build."""
    corpus = work / "calibration"
    write_corpus(corpus, 2.0, seed=1)
    megabytes = sum(p.stat().st_size for p in corpus.iterdir()) / 1e6
    summary = build_index([corpus], work / "calibration.db", bundled_tokenizer(), passage_tokens=passage_tokens)
    shutil.rmtree(corpus)
    (work / "calibration.db").unlink()
    return megabytes / summary.passages


def table(results: list[RetrievalResult], passage_tokens: int) -> str:
    lines = [
        f"| passages (of <= {passage_tokens} tokens) | corpus MB | build s | build CPU s | build MB/s | passages/s "
        "| index MB "
        "| search p50 ms | p95 ms | p99 ms | CPU p50 ms | CPU p95 ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.passages:,} | {r.megabytes} | {r.build_seconds} | {r.build_cpu_seconds} | {r.build_mb_per_s} "
            f"| {r.passages_per_s:,} "
            f"| {r.index_megabytes} | {r.p50_ms} | {r.p95_ms} | {r.p99_ms} | {r.cpu_p50_ms} | {r.cpu_p95_ms} |"
        )
    lines += [
        "",
        "| passages | search p50 ms, rarest words pick candidates | every passage with a word scored | ratio "
        "| p95 ms | every passage scored | ratio | CPU p95 ms | every passage scored | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r.passages:,} | {r.p50_ms} | {r.all_words_p50_ms} | {r.all_words_p50_ms / r.p50_ms:.1f}x "
            f"| {r.p95_ms} | {r.all_words_p95_ms} | {r.all_words_p95_ms / r.p95_ms:.1f}x "
            f"| {r.cpu_p95_ms} | {r.all_words_cpu_p95_ms} | {r.all_words_cpu_p95_ms / r.cpu_p95_ms:.1f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="Passage counts to build (about).")
    parser.add_argument("--passage-tokens", type=int, default=400)
    parser.add_argument("--queries", type=int, default=1000, help="Searches timed per size.")
    parser.add_argument("--output", "-o", type=Path, help="Also write the results as JSON here.")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeqa-retrieval-") as folder:
        work = Path(folder)
        per_passage = calibrate(work, args.passage_tokens)
        for size in (int(s) for s in args.sizes.split(",") if s):
            results.append(measure(size, work, args.passage_tokens, args.queries, per_passage))
            print(json.dumps(asdict(results[-1])), flush=True)
    print(table(results, args.passage_tokens))
    if args.output:
        args.output.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

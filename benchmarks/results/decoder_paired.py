"""The decoder against the greedy loop it replaced, paired in one process (a record of issue 27's check).

    python benchmarks/results/decoder_paired.py --rev 05c2037 --shapes small,base
    python benchmarks/results/decoder_paired.py --shapes small --padding-cost --rounds 4

The loop `QAModel` ran before the decoder (`greedy_tokens` in runtime/generate.py at REV) is read
from git and run over the same loaded graphs as `QAModel.generate`, which now goes through
`edgeqa.runtime.Decoder`: the two alternate answer by answer, every answer forced to the same
length, and the figure is the median of the pairs' time ratios (new / old), so that a machine's
load cancels out. The tokens of both must be identical. Not part of the package: it exists to
reproduce the figures in docs/runtime.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import types
from pathlib import Path

import numpy as np

from edgeqa.runtime import QAModel
from edgeqa.runtime.decoder import pad_prompts


def previous_loop(rev: str) -> types.ModuleType:
    source = subprocess.run(
        ["git", "show", f"{rev}:runtime/generate.py"], check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType("previous_generate")
    exec(compile(source, f"{rev}:runtime/generate.py", "exec"), module.__dict__)  # noqa: S102 (the project's own code)
    return module


def previous_generate(old: types.ModuleType, model: QAModel, prompts: list[list[int]], new_tokens: int) -> list:
    """What `QAModel.generate` did at REV: pad, encode, `greedy_tokens`, cut at end-of-answer."""
    special = model.manifest.special_tokens
    opts = model.options(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    state = model.graphs.encode(*pad_prompts(prompts, special.pad))
    steps = list(old.greedy_tokens(model.graphs, state, opts, special.decoder_start, special.eos, special.pad))
    return [old.until_eos(row, special.eos) for row in np.stack(steps, axis=1).tolist()]


def artifact(shape: str, cache: Path) -> Path:
    from edgeqa.export import ExportConfig, export_artifact
    from edgeqa.finetune.models import FLAN_T5_SHAPES, build_random_t5

    checkpoint, int8 = cache / shape / "checkpoint", cache / shape / "int8"
    if not (checkpoint / "config.json").exists():
        build_random_t5(checkpoint, **FLAN_T5_SHAPES[shape])
    if not (int8 / "manifest.json").exists():
        export_artifact(
            ExportConfig(checkpoint=str(checkpoint), output=int8, quantize="int8", parity=False, force=True)
        )
    return int8


def paired(model: QAModel, old: types.ModuleType, prompts: list[list[int]], batch: int, new_tokens: int, rounds: int):
    ratios, new_ms, old_ms = [], [], []
    for round_ in range(rounds):
        for first in range(0, len(prompts) - batch + 1, batch):
            group = prompts[first : first + batch]
            timed = []
            for which in ("new", "old") if (round_ + first) % 2 == 0 else ("old", "new"):
                started = time.perf_counter()
                if which == "new":
                    tokens = model.generate(group, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
                else:
                    tokens = previous_generate(old, model, group, new_tokens)
                timed.append((which, time.perf_counter() - started, tokens))
            seconds = dict((which, s) for which, s, _ in timed)
            answers = [tokens for _, _, tokens in timed]
            if answers[0] != answers[1]:
                raise SystemExit("the decoder and the previous loop answered differently")
            ratios.append(seconds["new"] / seconds["old"])
            new_ms.append(seconds["new"] * 1000 / (batch * new_tokens))
            old_ms.append(seconds["old"] * 1000 / (batch * new_tokens))
    return statistics.median(ratios), statistics.median(new_ms), statistics.median(old_ms), len(ratios)


def padding_cost(model: QAModel, prompts: list[list[int]], new_tokens: int, rounds: int) -> tuple[float, int]:
    """The decoder at batch 8 with prompts padded to a multiple of 4 against padded to the longest only."""
    from edgeqa.runtime import decoder

    ratios = []
    for round_ in range(rounds):
        for first in range(0, len(prompts) - 7, 8):
            seconds = {}
            for pad in (4, 1) if (round_ + first // 8) % 2 == 0 else (1, 4):
                decoder.PAD_MULTIPLE = pad
                started = time.perf_counter()
                model.generate(prompts[first : first + 8], max_new_tokens=new_tokens, min_new_tokens=new_tokens)
                seconds[pad] = time.perf_counter() - started
            ratios.append(seconds[4] / seconds[1])
    decoder.PAD_MULTIPLE = 4
    return statistics.median(ratios), len(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", default="05c2037", help="the commit whose greedy loop is compared")
    parser.add_argument("--shapes", default="small,base")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/edgeqa-bench-cache/decoder"))
    parser.add_argument("--padding-cost", action="store_true", help="measure padding to 4 vs to the longest")
    args = parser.parse_args()
    from edgeqa.records import read_records, sample_data

    if args.padding_cost:
        from edgeqa.bench.serve_load import questions

        model = QAModel.load(artifact(args.shapes.split(",")[0], args.cache), threads=args.threads)
        prompts = [ids for ids, _ in model.decoder().prompts(questions(64))]
        ratio, pairs = padding_cost(model, prompts, args.new_tokens, args.rounds)
        print(f"padding to 4 / to the longest prompt, batch 8: {ratio:.3f}x ({pairs} pairs)")
        return

    old = previous_loop(args.rev)
    print(
        f"| shape | batch | decoder ms/token | previous loop ms/token | ratio (median of {args.rounds} rounds' pairs) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for shape in args.shapes.split(","):
        model = QAModel.load(artifact(shape, args.cache), threads=args.threads)
        asked = [r.question for r in read_records(sample_data("validation"))][: args.questions]
        prompts = [ids for ids, _ in model.decoder().prompts(asked)]
        model.generate(prompts[:2], max_new_tokens=4)  # warm up
        for batch in map(int, args.batches.split(",")):
            ratio, new_ms, old_ms, pairs = paired(model, old, prompts, batch, args.new_tokens, args.rounds)
            print(f"| {shape} | {batch} | {new_ms:.2f} | {old_ms:.2f} | {ratio:.3f}x ({pairs} pairs) |", flush=True)


if __name__ == "__main__":
    main()

"""The reading benchmark's report: its tables, profile lines and verdict, from a run's results (`reading.py`).

python -m edgeqa.bench.reading --render bench-results/reading.json --output reading.md
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from edgeqa.bench.reading import ASK, GOAL, ReadingConfig, ShapeResult
from edgeqa.bench.run import label


def markdown(results: dict[str, ShapeResult], config: ReadingConfig) -> str:
    """The results table (medians, ratios), the profile lines and the verdict."""
    lines = [
        f"{config.passages} passages of up to {config.passage_tokens} tokens in one batch, "
        f"{config.new_tokens} answer tokens each, {config.threads} threads (CTranslate2 also 1), "
        f"{config.rounds} rounds x {config.reps} batches per mode; medians in ms.",
        "",
        f"| shape | engine | prompt: encoder + 1st token | read: + {config.new_tokens - 1} tokens | decoder step | "
        "read vs best CT2 | read vs PyTorch | prompt vs best CT2 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for shape, r in results.items():
        best_read, best_prompt = r.best_ct2("read"), r.best_ct2("prompt")
        for engine in r.times:
            read, prompt = r.median(engine, "read"), r.median(engine, "prompt")
            step = (read - prompt) / (config.new_tokens - 1)
            cells = [f"{shape}", label(engine), f"{prompt:.0f}", f"{read:.0f}", f"{step:.1f}"]
            for other, mode in ((best_read, "read"), ("pytorch", "read"), (best_prompt, "prompt")):
                if engine.startswith("edgeqa") and other in r.times:
                    ratios = r.round_ratios(engine, other, mode)
                    cells.append(
                        f"{r.median(engine, mode) / r.median(other, mode):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
                    )
                else:
                    cells.append("")
            lines.append("| " + " | ".join(cells) + " |")
            if engine.startswith("edgeqa") and best_read:
                ratio = read / r.median(best_read, "read")
                verdicts.append(
                    f"{shape}, {label(engine)}: {ratio:.2f}x {label(best_read)} for the reading work: "
                    f"{'met' if ratio <= GOAL else 'not met'} (goal <= {GOAL}x)"
                )
            if engine in r.asked() and best_read:
                ratio = r.median(engine, ASK) / r.median(best_read, "read")
                verdicts.append(
                    f"{shape}, {label(engine)}: the whole ask {ratio:.2f}x {label(best_read)}'s read alone: "
                    f"{'within' if ratio <= GOAL else 'over'} the goal with the search and the choice counted"
                )
    lines += ["", "Ratios: of the medians, (in brackets) the range of the per-round ratios.", ""]
    lines += ask_table(results)
    for shape, r in results.items():
        lines.append(
            f"- {shape}: prompts of {min(r.prompt_tokens)}-{max(r.prompt_tokens)} tokens "
            f"(passages {min(r.passage_tokens)}-{max(r.passage_tokens)})"
        )
        if r.asked():
            same = all(r.ask.get("same_ids", {}).values())
            lines.append(
                f"  - ask: the index holds {r.ask['index_passages']} passages (the bundled answers, indexed by "
                f"`build_index`); the question {r.ask['question']!r} finds the {len(r.prompt_tokens)} passages read"
                f"{', as the same token ids' if same else ', but NOT as the same token ids'}"
            )
        for engine, parts in r.ask_parts.items():
            steps = ", ".join(f"{step} {r.part(engine, step):.2f}" for step in parts[0])
            lines.append(f"  - {label(engine)}, an ask's steps timed apart: {steps} ms")
        for engine, profile in r.profile.items():
            if not profile:
                continue
            enc = statistics.median(p["encoder_ms"] for p in profile)
            first = statistics.median(p["first_step_ms"] for p in profile)
            later = statistics.median(p["later_steps_ms"] / max(1, p["steps"] - 1) for p in profile)
            lines.append(
                f"  - {label(engine)}, inside a read: encoder graph {enc:.0f} ms, first step {first:.1f} ms, "
                f"later steps {later:.1f} ms each"
            )
        for engine, values in r.encoder_ms.items():
            lines.append(f"  - {label(engine)}: encoder alone {statistics.median(values):.0f} ms")
        scored = [label(e) for e, s in r.scores.items() if s and s[0] is not None]
        unscored = [label(e) for e, s in r.scores.items() if not s or s[0] is None]
        if config.scored:
            lines.append(
                f"  - answer scores returned by {', '.join(scored) or 'none'}; not by {', '.join(unscored)}"
                if unscored
                else "  - every engine returned the answers' scores"
            )
        if r.load:
            lines.append(f"  - 1-minute load average at the turns: {min(r.load):.1f} to {max(r.load):.1f}")
    return "\n".join(lines + ["", "Verdict:", ""] + [f"- {v}" for v in verdicts]) + "\n"


def ask_table(results: dict[str, ShapeResult]) -> list[str]:
    """The table of edgeqa's whole ask beside its read and the others' reads ([] if no engine asked)."""
    if not any(r.asked() for r in results.values()):
        return []
    lines = [
        "`ask --index` end to end: edgeqa's `DocumentsQA.ask` (the search in the index, the same batched read of "
        "the same token ids, the choice), timed right after its read in the same turns, then its steps timed "
        "apart. CTranslate2 and PyTorch have no index: their columns set edgeqa's whole ask against their read "
        "alone.",
        "",
        "| shape | engine | read | ask | ask - read (per round) | search + prompts + choice, timed apart | "
        "ask vs best CT2 read | ask vs PyTorch read |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for shape, r in results.items():
        for engine in r.asked():
            read, ask = r.median(engine, "read"), r.median(engine, ASK)
            extra = [
                statistics.median(a) - statistics.median(b)
                for a, b in zip(r.times[engine][ASK], r.times[engine]["read"], strict=True)
            ]
            cells = [shape, label(engine), f"{read:.0f}", f"{ask:.0f}"]
            cells.append(f"{ask - read:+.1f} ({min(extra):+.1f} to {max(extra):+.1f})")
            steps = [r.part(engine, step) for step in ("search", "prompts", "choice")]
            cells.append(" + ".join(f"{t:.2f}" for t in steps) + f" = {sum(steps):.1f} ({sum(steps) / ask:.1%} of ask)")
            for other in (r.best_ct2("read"), "pytorch"):
                if other in r.times:
                    ratios = r.round_ratios(engine, other, ASK, "read")
                    cells.append(f"{ask / r.median(other, 'read'):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
                else:
                    cells.append("")
            lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def write_report(data: dict[str, Any], output: Path) -> None:
    """Write the markdown report of a run's JSON (what `main` saves beside it) and print it."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data["config"].items()}
    config = ReadingConfig(**fields | {"cache": Path(fields["cache"])})
    results = {shape: ShapeResult(**r) for shape, r in data["shapes"].items()}
    text = "\n".join([*data["header"], ""]) + markdown(results, config)
    output.write_text(text)
    print(text)

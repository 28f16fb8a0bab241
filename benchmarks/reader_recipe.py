"""The reader's training recipe: exact match on held-out counterfactual questions over training time.

Trains a randomly initialised FLAN-T5-shaped reader with `edgeqa.finetune` on pages of train
countries (fresh counterfactual worlds), and at given steps (with the training time, evaluations not
counted) measures, on test countries asked in phrasings never trained on:

- gold EM: the reader given the right page;
- retrieval: BM25's top 4 passages of the test world's index, read in one batch, the answer chosen
  as `DocumentsQA` chooses (`edgeqa.documents.choose`: the reader's length-normalised
  log-probability plus the passage's retrieval log-probability); right-source rate and EM of that
  answer, and the same with the reader's score alone (`reader_source`, `reader_em`).

    python -m edgeqa.bench.reader_recipe --steps 250 500 750 1000 --output runs/rr-base
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, TrainerCallback

from edgeqa import counterfactual as cf
from edgeqa.demo import DEMO_SHAPE
from edgeqa.documents import Candidate, Index, build_index, choose
from edgeqa.documents.answers import RETRIEVAL_WEIGHT
from edgeqa.metrics import exact_match
from edgeqa.prompt import CONTEXT_TEMPLATE, format_prompt

ABSTAIN = cf.ABSTAIN
TOKENIZER_JSON = Path(cf.__file__).parent / "assets" / "flan-t5-tokenizer" / "tokenizer.json"


def prompt(question: str, context: str) -> str:
    return format_prompt(question, context=context, context_template=CONTEXT_TEMPLATE)


def training_data(folder: Path, args: argparse.Namespace, train_names: list[str]) -> int:
    """train.jsonl (fresh worlds, optional negatives) and a small validation.jsonl; returns the train size."""
    rows = cf.train_records(
        train_names,
        args.worlds,
        args.relations,
        share=args.share,
        seed=args.seed,
        fillers=not args.no_fillers,
        negative_share=args.negatives,
    )
    out = [{"question": prompt(str(r["question"]), str(r["context"])), "answer": r["answer"]} for r in rows]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out)
    with open(folder / "validation.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in out[:16])
    return len(out)


class Reader:
    """Greedy answers and their scores from the PyTorch model (the prototype of the CPU runtime's)."""

    def __init__(self, model: Any, tokenizer: Any, max_source_tokens: int) -> None:
        self.model, self.tokenizer, self.max_source_tokens = model, tokenizer, max_source_tokens

    @torch.no_grad()
    def answer(self, prompts: list[str], batch: int = 64) -> list[tuple[str, float]]:
        out = []
        for i in range(0, len(prompts), batch):
            enc = self.tokenizer(
                prompts[i : i + batch],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_source_tokens,
            )
            gen = self.model.generate(
                **enc, max_new_tokens=16, do_sample=False, num_beams=1, output_scores=True, return_dict_in_generate=True
            )
            steps = self.model.compute_transition_scores(gen.sequences, gen.scores, normalize_logits=True)
            tokens = gen.sequences[:, 1:]
            live = torch.ones_like(tokens, dtype=torch.bool)
            # the answer's tokens up to and including the first end token
            ended = (tokens == self.tokenizer.eos_token_id).cumsum(1)
            live = (ended == 0) | ((ended == 1) & (tokens == self.tokenizer.eos_token_id))
            mean = (steps * live).sum(1) / live.sum(1).clamp(min=1)
            texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
            out += [(t.strip(), float(s)) for t, s in zip(texts, mean, strict=True)]
        return out


def evaluate(reader: Reader, gold: list[dict], retrieved: list[tuple[dict, list[Any]]]) -> dict[str, Any]:
    """Gold-page EM, and the retrieval pipeline's right-source rate and EM."""
    answers = reader.answer([prompt(r["question"], r["context"]) for r in gold])
    gold_em = exact_match([a for a, _ in answers], [r["answer"] for r in gold])
    per_relation: dict[str, list[float]] = {}
    for (a, _), r in zip(answers, gold, strict=True):
        per_relation.setdefault(r["relation"], []).append(exact_match([a], [r["answer"]]))
    samples = [f"{r['answer']} <- {a}" for (a, _), r in list(zip(answers, gold, strict=True))[:6]]
    flat = [prompt(r["question"], p.text) for r, passages in retrieved for p in passages]
    read = iter(reader.answer(flat))
    readings = [(r, [Candidate(p, *next(read)) for p in passages]) for r, passages in retrieved]
    chosen: dict[str, float] = {}
    for name, weight in (("", RETRIEVAL_WEIGHT), ("reader_", 0.0)):
        right = hits = 0
        for r, candidates in readings:
            answer = choose(r["question"], candidates, ABSTAIN, weight)
            right += answer.source is not None and answer.source.title == r["page"]
            hits += exact_match([answer.text], [r["answer"]]) == 1.0
        n = max(1, len(retrieved))
        chosen |= {f"{name}source": right / n * 100, f"{name}em": hits / n * 100}
    return {
        "gold_em": gold_em * 100,
        **chosen,
        "by_relation": {k: round(sum(v) / len(v) * 100) for k, v in sorted(per_relation.items())},
        "samples": samples,
    }


class Checkpoints(TrainerCallback):
    """Evaluates at given steps, stops after the last. Records training time without the evaluations:
    wall minutes, and CPU minutes of this process (the machine is shared: CPU time / threads is what the
    steps would take on idle cores)."""

    def __init__(self, steps: list[int], measure: Any, log: Path) -> None:
        self.steps, self.measure, self.log = sorted(steps), measure, log
        self.started = self.cpu_started = 0.0
        self.paused = self.cpu_paused = 0.0
        self.loss: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if logs and "loss" in logs:
            self.loss = round(float(logs["loss"]), 3)

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        if not self.steps or state.global_step < self.steps[0]:
            return control
        self.steps.pop(0)
        trained = (time.perf_counter() - self.started - self.paused) / 60
        cpu = (time.process_time() - self.cpu_started - self.cpu_paused) / 60
        pause, cpu_pause = time.perf_counter(), time.process_time()
        model.eval()
        row = {
            "step": state.global_step,
            "minutes": round(trained, 2),
            "cpu_minutes": round(cpu, 2),
            "load": round(os.getloadavg()[0], 2),
        }
        row["loss"] = self.loss
        row |= {k: round(v, 1) if isinstance(v, float) else v for k, v in self.measure(model).items()}
        model.train()
        self.paused += time.perf_counter() - pause
        self.cpu_paused += time.process_time() - cpu_pause
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        if not self.steps:
            control.should_training_stop = True
        return control


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[250, 500, 750, 1000])
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-steps", type=int, default=None, help="the schedule's length (linear decay)")
    parser.add_argument("--max-source-tokens", type=int, default=192)
    parser.add_argument("--tie", action="store_true", help="tie_word_embeddings=True")
    parser.add_argument("--d-model", type=int, default=DEMO_SHAPE["d_model"])
    parser.add_argument("--d-ff", type=int, default=DEMO_SHAPE["d_ff"])
    parser.add_argument("--dropout", type=float, default=0.1, help="T5Config.dropout_rate (FLAN-T5's: 0.1)")
    parser.add_argument("--retrieval-questions", type=int, default=60)
    parser.add_argument("--layers", type=int, default=DEMO_SHAPE["num_layers"])
    parser.add_argument("--worlds", type=int, default=60, help="fresh counterfactual worlds in the training data")
    parser.add_argument("--share", type=float, default=1.0, help="counterfactual share of the training worlds")
    parser.add_argument(
        "--negatives",
        type=float,
        default=0.0,
        help="records asked of a wrong page (answer: unanswerable), added per record",
    )
    parser.add_argument("--no-fillers", action="store_true", help="pages without population/area/ISO sentences")
    parser.add_argument("--relations", nargs="+", default=list(cf.PAGE_RELATIONS))
    parser.add_argument("--eval-questions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from edgeqa.finetune import FinetuneConfig, finetune
    from edgeqa.finetune.models import build_random_t5

    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(args), default=str, indent=1))
    train_names, test_names = cf.split_countries(seed=args.seed)
    world = cf.build_world(
        relations=args.relations, seed=args.seed, fillers=not args.no_fillers
    )  # the demo's world: every country
    pages = out / "pages"
    cf.write_pages(world, pages)
    build_index([pages], out / "index.db", TOKENIZER_JSON)
    tests = cf.records(world, "test", seed=args.seed, pages=set(test_names))
    tests = tests[: args.eval_questions]
    index = Index.open(out / "index.db")
    retrieved = [(r, index.search(str(r["question"]), k=4)) for r in tests[: args.retrieval_questions]]
    size = training_data(out / "data", args, train_names)
    shape = dict(DEMO_SHAPE) | dict(
        d_model=args.d_model, d_ff=args.d_ff, num_layers=args.layers, num_decoder_layers=args.layers
    )
    model_dir = build_random_t5(
        out / "base", initializer_factor=0.5, tie_word_embeddings=args.tie, dropout_rate=args.dropout, **shape
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    log = out / "curve.jsonl"
    log.unlink(missing_ok=True)

    def measure(model: Any) -> dict[str, Any]:
        return evaluate(Reader(model, tokenizer, args.max_source_tokens), tests, retrieved)

    print(f"train records {size}, test questions {len(tests)}, retrieval questions {len(retrieved)}", flush=True)
    finetune(
        FinetuneConfig(
            model=str(model_dir),
            data=str(out / "data"),
            output_dir=out / "run",
            prompt_template="{question}",
            epochs=1000,
            max_steps=args.max_steps or 10**6,
            learning_rate=args.lr,
            batch_size=args.batch,
            max_source_tokens=args.max_source_tokens,
            max_target_tokens=24,
            eval_max_new_tokens=24,
            logging_steps=50,
            save_total_limit=1,
            overwrite=True,
            length_grouping="none",
            seed=args.seed,
        ),
        callbacks=[Checkpoints(args.steps, measure, log)],
        trainer_overrides=dict(
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            dataloader_drop_last=True,
        ),
    )


if __name__ == "__main__":
    main()

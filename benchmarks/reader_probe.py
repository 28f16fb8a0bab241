"""A quick probe of the documents reader's training recipe: a plain PyTorch loop, one process.

`edgeqa demo --documents` trains its reader with `edgeqa finetune`; this loop trains the same
shape on the same records (`edgeqa.counterfactual`) without the trainer's evaluation and
checkpoint costs, so that recipe variants can be compared by steps on a shared machine. It prints
the reader's exact match given the right page on the held-out test questions, by relation, and
how often it picks a question's page among four (by its answer's score, `right_page`, and by the
question's likelihood, `right_page_by_question`) at each evaluation, and writes them as JSON lines.

    python -m edgeqa.bench.reader_probe --open-vocabulary --question-generation 0.25 --output runs/a.jsonl
    python -m edgeqa.bench.reader_probe --tied --init 1.0 --steps 3000 --output runs/probe-b.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import T5ForConditionalGeneration, T5TokenizerFast

from edgeqa.counterfactual import (
    ABSTAIN,
    WRITE_QUESTION,
    build_world,
    records,
    relation_sentences,
    split_countries,
    train_records,
)
from edgeqa.demo_documents import RECIPE
from edgeqa.finetune.models import build_random_t5
from edgeqa.metrics import exact_match
from edgeqa.prompt import CONTEXT_TEMPLATE, format_prompt
from edgeqa.records import BUNDLED_TOKENIZER


def build_model(args: argparse.Namespace, folder: Path) -> T5ForConditionalGeneration:
    """The reader to train: `build_random_t5`'s FLAN-T5 shape and defaults, sized by the arguments."""
    built = build_random_t5(
        folder,
        seed=args.seed,
        d_model=args.d_model,
        d_kv=args.d_model // args.heads,
        d_ff=args.d_ff or 2 * args.d_model,
        num_layers=args.layers,
        num_decoder_layers=args.decoder_layers or args.layers,
        num_heads=args.heads,
        tie_word_embeddings=args.tied,
        initializer_factor=args.init,
        dropout_rate=args.dropout,
    )
    model = T5ForConditionalGeneration.from_pretrained(built)
    if not args.tied and args.head_from_embedding:
        with torch.no_grad():
            model.lm_head.weight.copy_(model.shared.weight)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--d-ff", type=int, default=0, help="[2 x d-model]")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--decoder-layers", type=int, default=0, help="[--layers]")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--tied", action="store_true")
    parser.add_argument("--head-from-embedding", action="store_true", help="untied lm_head started as the embedding")
    parser.add_argument("--init", type=float, default=0.5, help="initializer_factor")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=RECIPE.learning_rate)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--batch", type=int, default=RECIPE.batch_size)
    parser.add_argument("--steps", type=int, default=3000, help="the schedule's length (linear decay to 0)")
    parser.add_argument("--stop-after", type=int, default=0, help="stop early at this step [--steps]")
    parser.add_argument(
        "--one-sentence-steps",
        type=int,
        default=0,
        help="curriculum: passages of the sentences of the asked relation only",
    )
    parser.add_argument("--negatives", type=float, default=0.0, help="share of records asked of another page")
    parser.add_argument("--negatives-from", type=int, default=0, help="the step the negatives join at")
    parser.add_argument("--open-vocabulary", action="store_true", help="train_records(open_vocabulary=True)")
    parser.add_argument("--made-up", type=float, default=0.0, help="train_records(made_up_share=...)")
    parser.add_argument(
        "--question-generation",
        type=float,
        default=RECIPE.question_share,
        help="train_records(question_share=...) [RECIPE's]",
    )
    parser.add_argument("--crowd", type=float, default=0.0, help="train_records(crowd_share=...)")
    parser.add_argument("--worlds", type=int, default=RECIPE.worlds)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--save", type=Path, help="save the last weights here (save_pretrained)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    relations = RECIPE.relations

    tokenizer = T5TokenizerFast.from_pretrained(BUNDLED_TOKENIZER)
    train_names, test_names = split_countries()

    def training(negative_share: float) -> list[dict]:
        return train_records(
            train_names,
            args.worlds,
            relations,
            fillers=False,
            negative_share=negative_share,
            open_vocabulary=args.open_vocabulary,
            made_up_share=args.made_up,
            crowd_share=args.crowd,
            question_share=args.question_generation,
        )

    rows = training(0.0)
    with_negatives = training(args.negatives) if args.negatives else rows
    world = build_world(relations=relations, fillers=False)
    tests = records(world, "test", pages=set(test_names))
    # the test countries asked in the trained phrasings: what the unseen phrasings cost
    tests += [r | {"relation": f"{r['relation']}@train"} for r in records(world, "train", pages=set(test_names))]

    def sentence(r: dict) -> str:
        """The context's sentences of the asked relation: the stating one, another subject's for a negative."""
        return relation_sentences(str(r["context"]), str(r["relation"]))

    def encode(batch: list[dict], one_sentence: bool) -> dict[str, torch.Tensor]:
        prompts = [
            format_prompt(
                str(r["question"]),
                context=sentence(r) if one_sentence else str(r["context"]),
                context_template=CONTEXT_TEMPLATE,
            )
            for r in batch
        ]
        source = tokenizer(
            prompts, padding=True, truncation=True, max_length=RECIPE.max_source_tokens, return_tensors="pt"
        )
        target = tokenizer([str(r["answer"]) for r in batch], padding=True, return_tensors="pt").input_ids
        target[target == tokenizer.pad_token_id] = -100
        return {"input_ids": source.input_ids, "attention_mask": source.attention_mask, "labels": target}

    test_prompts = [format_prompt(str(r["question"]), context=str(r["context"])) for r in tests]
    test_source = tokenizer(test_prompts, padding=True, return_tensors="pt")

    # page choice: each held-out question read from its own page and 3 other test pages
    held = [i for i, r in enumerate(tests) if "@" not in str(r["relation"])]
    held_tests = [tests[i] for i in held]
    bodies = sorted({str(r["context"]) for r in held_tests})
    pick = random.Random(1)
    choice_rows = []
    for r in held_tests:
        others = pick.sample([b for b in bodies if b != r["context"]], 3)
        choice_rows += [(r, str(r["context"]), True)] + [(r, b, False) for b in others]
    choice_source = tokenizer(
        [format_prompt(str(r["question"]), context=b) for r, b, _ in choice_rows], padding=True, return_tensors="pt"
    )

    def choose(model: T5ForConditionalGeneration) -> tuple[float, float]:
        """Right-page share and exact match when the surest answer (mean log-prob, abstentions last) wins: the
        reader's half of `edgeqa.documents.choose` (its pages are random, with no BM25 to join)."""
        with torch.no_grad():
            out: Any = model.generate(
                **choice_source,
                max_new_tokens=16,
                do_sample=False,
                num_beams=1,
                output_scores=True,
                return_dict_in_generate=True,
            )
            steps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        tokens = out.sequences[:, 1:]
        mask = (tokens != tokenizer.pad_token_id) | (torch.arange(tokens.shape[1]) == 0)
        mean = (steps * mask).sum(1) / mask.sum(1)
        answers = tokenizer.batch_decode(out.sequences, skip_special_tokens=True)
        right = correct = 0
        for q in range(0, len(choice_rows), 4):
            # a tie goes against the right page (always first of its four)
            ranked = sorted(
                range(q, q + 4),
                key=lambda i: (answers[i].strip() == ABSTAIN, -mean[i].item(), choice_rows[i][2]),
            )
            best = ranked[0]
            right += choice_rows[best][2]
            correct += exact_match([answers[best]], [str(choice_rows[best][0]["answer"])]) == 1.0
        n = len(choice_rows) // 4
        return right / n, correct / n

    question_source = tokenizer(
        [format_prompt(WRITE_QUESTION, context=b) for _, b, _ in choice_rows], padding=True, return_tensors="pt"
    )
    labels = tokenizer([str(r["question"]) for r, _, _ in choice_rows], padding=True, return_tensors="pt").input_ids
    labels[labels == tokenizer.pad_token_id] = -100

    def choose_by_question(model: T5ForConditionalGeneration) -> float:
        """Right-page share when the page under which the question is likeliest wins."""
        totals = []
        with torch.no_grad():
            for start in range(0, len(choice_rows), 64):
                part = slice(start, start + 64)
                logits = model(
                    input_ids=question_source.input_ids[part],
                    attention_mask=question_source.attention_mask[part],
                    labels=labels[part],
                ).logits
                picked = torch.log_softmax(logits, -1).gather(-1, labels[part].clamp(min=0).unsqueeze(-1)).squeeze(-1)
                totals += (picked * (labels[part] != -100)).sum(1).tolist()
        right = sum(totals[q] > max(totals[q + 1 : q + 4]) for q in range(0, len(choice_rows), 4))
        return right / (len(choice_rows) // 4)

    def evaluate(model: T5ForConditionalGeneration) -> dict[str, float]:
        model.eval()
        scores: dict[str, float] = {}
        with torch.no_grad():
            out = model.generate(**test_source, max_new_tokens=16, do_sample=False, num_beams=1)
            scores["right_page"], scores["chosen_em"] = choose(model)
            scores["right_page_by_question"] = choose_by_question(model)
        model.train()
        answers = tokenizer.batch_decode(out, skip_special_tokens=True)
        scores["all"] = exact_match([answers[i] for i in held], [str(tests[i]["answer"]) for i in held])
        for relation in sorted({str(r["relation"]) for r in tests}):
            members = [i for i, r in enumerate(tests) if r["relation"] == relation]
            scores[relation] = exact_match([answers[i] for i in members], [str(tests[i]["answer"]) for i in members])
        return scores

    with tempfile.TemporaryDirectory() as folder:
        model = build_model(args, Path(folder) / "reader")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / args.warmup, max(0.0, (args.steps - s) / (args.steps - args.warmup)))
    )
    rng = random.Random(args.seed)
    order: list[int] = []
    switched = False
    args.output.parent.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    last = args.stop_after or args.steps
    with open(args.output, "w", encoding="utf-8") as log:
        log.write(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}}) + "\n")
        losses: list[float] = []
        for step in range(1, last + 1):
            pool = with_negatives if args.negatives and step > args.negatives_from else rows
            if pool is not rows and not switched:
                order, switched = [], True
            if len(order) < args.batch:
                order += rng.sample(range(len(pool)), len(pool))
            batch = [pool[order.pop()] for _ in range(args.batch)]
            loss = model(**encode(batch, step <= args.one_sentence_steps)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if step % args.eval_every == 0 or step == last:
                train_s = time.perf_counter() - started
                scores = evaluate(model)
                entry = {
                    "step": step,
                    "loss": sum(losses) / len(losses),
                    "wall_s": round(train_s, 1),
                    "cpu_s": round(time.process_time() - cpu_started, 1),
                    **{k: round(v * 100, 1) for k, v in scores.items()},
                }
                losses = []
                log.write(json.dumps(entry) + "\n")
                log.flush()
                print(json.dumps(entry), flush=True)
    if args.save:
        model.save_pretrained(args.save)


if __name__ == "__main__":
    main()

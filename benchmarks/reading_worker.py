"""One engine of the reading benchmark in its own process, kept loaded between rounds.

Run by `benchmarks.reading`: `python -m edgeqa.bench.reading_worker SPEC.json`. The spec names the
engine, the model path, the threads, the prompts (token ids) and the forced answer length. The
worker loads its engine, prints `{"ready": ...}`, then answers one JSON command a line on stdin
(`{"mode": "prompt" | "read" | "ask", "reps": N}`) with one JSON line on stdout, until stdin closes.

- `prompt`: the batch's encoder run and its first answer token (every engine's smallest unit of
  work: CTranslate2 has no encoder-only call and computes the cross-attention keys and values in
  its first decoder step, where edgeqa's encoder graph computes them). Where the engine can run its
  encoder alone (edgeqa, PyTorch), that time is reported too.
- `read`: the whole reading work: the encoder and exactly `new_tokens` greedy answer tokens for
  every prompt of the batch, with each answer's score (sum of log-probabilities) where the engine
  gives one.
- `ask` (edgeqa, with an `ask` spec: `index`, `question`, `k`): `DocumentsQA.ask`, all that `edgeqa ask
  --index` does for a question once loaded: the search, the prompts, the batched read (answers forced to
  `new_tokens` as in `read`), the choice. Then the same steps once more, timed apart (search, prompts,
  read, choice) through the functions `DocumentsQA.ask` and `edgeqa serve --index` run them with.
  Whether the passages found make the very token ids of `read` is checked once.

Like `edgeqa.bench.worker`, this imports only its engine.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

# (prompts, new tokens, scored) -> (each prompt's tokens, each prompt's score or None, timings in ms)
Read = Callable[[list[list[int]], int, bool], tuple[list[list[int]], list[float | None], dict[str, float]]]
# (new tokens) -> the answer length read from each passage
Ask = Callable[[int], list[int]]
# (new tokens) -> the ask's steps timed apart, in ms
Parts = Callable[[int], dict[str, float]]


def load_engine(engine: str, path: str, threads: int, tokenizer_path: str) -> tuple[Read, Callable | None, Any]:
    """The engine's reading function, a function running its encoder alone (None without one), and the
    loaded `QAModel` (edgeqa's; None for the others)."""
    if engine == "pytorch":
        return *_pytorch(path, threads), None
    if engine == "ctranslate2":
        return *_ctranslate2(path, threads, tokenizer_path), None
    if engine == "edgeqa":
        return _edgeqa(path, threads)
    raise SystemExit(f"unknown engine {engine}")


def _pytorch(path: str, threads: int) -> tuple[Read, Callable]:
    import torch
    from transformers import T5ForConditionalGeneration

    from edgeqa.bench.worker import _pad_torch

    torch.set_num_threads(threads)
    model = T5ForConditionalGeneration.from_pretrained(path).eval()

    def read(prompts: list[list[int]], new_tokens: int, scored: bool) -> tuple[list, list, dict]:
        ids, mask = _pad_torch(prompts)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                num_beams=1,
                min_new_tokens=new_tokens,
                max_new_tokens=new_tokens,
                output_scores=scored,
                return_dict_in_generate=True,
            )
            scores: list[float | None] = [None] * len(prompts)
            if scored:
                steps = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
                scores = steps.sum(dim=1).tolist()
        return [row[1:] for row in out.sequences.tolist()], scores, {}

    def encode(prompts: list[list[int]]) -> None:
        ids, mask = _pad_torch(prompts)
        with torch.inference_mode():
            model.get_encoder()(input_ids=ids, attention_mask=mask)

    return read, encode


def _ctranslate2(path: str, threads: int, tokenizer_path: str) -> tuple[Read, None]:
    import ctranslate2
    from tokenizers import Tokenizer

    translator = ctranslate2.Translator(path, device="cpu", compute_type="int8", intra_threads=threads, inter_threads=1)
    tokenizer = Tokenizer.from_file(tokenizer_path)

    def read(prompts: list[list[int]], new_tokens: int, scored: bool) -> tuple[list, list, dict]:
        tokens = [[tokenizer.id_to_token(i) for i in ids] for ids in prompts]
        results = translator.translate_batch(
            tokens,
            beam_size=1,
            max_decoding_length=new_tokens,
            min_decoding_length=new_tokens,
            max_batch_size=len(tokens),
            return_scores=scored,
        )
        answers = [[tokenizer.token_to_id(t) for t in r.hypotheses[0]] for r in results]
        return answers, [r.scores[0] if scored else None for r in results], {}

    return read, None


def _edgeqa(path: str, threads: int) -> tuple[Read, Callable, Any]:
    from edgeqa.runtime import GenerationOptions, QAModel, Row

    model = QAModel.load(path, threads=threads)

    def read(prompts: list[list[int]], new_tokens: int, scored: bool) -> tuple[list, list, dict]:
        # The decoder's own calls, so that the encoder run (join) and each step are timed apart.
        options = GenerationOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        decoder = model.decoder()
        rows = [Row(list(ids), options, scored=scored) for ids in prompts]
        started = time.perf_counter()
        decoder.join(rows)
        encoded = time.perf_counter()
        steps = []
        while decoder.busy:
            step = time.perf_counter()
            decoder.step()
            steps.append(time.perf_counter() - step)
        timings = {
            "encoder_ms": (encoded - started) * 1000,
            "first_step_ms": steps[0] * 1000,
            "later_steps_ms": sum(steps[1:]) * 1000,
            "steps": len(steps),
        }
        return [row.tokens for row in rows], [row.log_prob for row in rows], timings

    def encode(prompts: list[list[int]]) -> None:
        decoder = model.decoder()
        decoder.join([Row(list(ids), GenerationOptions(max_new_tokens=1)) for ids in prompts])

    return read, encode, model


def asker(model: Any, ask: dict[str, Any], prompts: list[list[int]]) -> tuple[Ask, Parts, bool]:
    """edgeqa's `DocumentsQA.ask` of `ask["question"]` over the index `ask["index"]` with `model`, its steps
    timed apart, and whether the prompts it reads are `prompts` (in any order)."""
    from edgeqa.documents import DocumentsQA, Index
    from edgeqa.runtime import GenerationOptions

    qa = DocumentsQA(model, Index.open(ask["index"]), k=ask["k"])
    question = ask["question"]
    found = qa.index.search(question, qa.k)
    ids = [i for i, _ in model.decoder().prompts([question] * len(found), [p.text for p in found])]

    def run(new_tokens: int) -> list[int]:
        answer = qa.ask(question, GenerationOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens))
        return [c.answer_tokens for c in answer.candidates]

    def parts(new_tokens: int) -> dict[str, float]:
        # `DocumentsQA.ask`'s own steps, each timed as it ends
        options = model.options(GenerationOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens))
        laps = [("start", time.perf_counter())]
        qa._read([question], options, qa.k, lambda step: laps.append((step, time.perf_counter())))
        return {step: (end - start) * 1000 for (_, start), (step, end) in zip(laps, laps[1:], strict=False)}

    return run, parts, sorted(ids) == sorted(prompts)


def serve(spec: dict[str, Any], commands: Any, out: Any) -> None:
    """Load the engine, then answer the commands read from `commands`, one JSON line each."""
    read, encode, model = load_engine(spec["engine"], spec["path"], spec["threads"], spec["tokenizer"])
    prompts: list[list[int]] = spec["prompts"]
    new_tokens: int = spec["new_tokens"]
    scored = spec.get("scored", True)
    read(prompts, new_tokens, scored)  # warm-up: the first run allocates and packs
    if encode is not None:
        encode(prompts)
    if "ask" in spec:
        ask, parts, same_ids = asker(model, spec["ask"], prompts)
        ask(new_tokens), parts(new_tokens)
    print(json.dumps({"ready": True, "engine": spec["engine"]}), file=out, flush=True)
    for line in commands:
        command = json.loads(line)
        reps, mode = command["reps"], command["mode"]
        if mode == "ask":
            print(json.dumps(_time_ask(ask, parts, same_ids, reps, new_tokens)), file=out, flush=True)
            continue
        result: dict[str, Any] = {"mode": mode, "ms": [], "timings": []}
        for _ in range(reps):
            started = time.perf_counter()
            tokens, scores, timings = read(prompts, 1 if mode == "prompt" else new_tokens, scored and mode == "read")
            result["ms"].append((time.perf_counter() - started) * 1000)
            result["timings"].append(timings)
        if mode == "prompt" and encode is not None:
            result["encoder_ms"] = []
            for _ in range(reps):
                started = time.perf_counter()
                encode(prompts)
                result["encoder_ms"].append((time.perf_counter() - started) * 1000)
        result["tokens"], result["scores"] = tokens, scores
        print(json.dumps(result), file=out, flush=True)


def _time_ask(ask: Ask, parts: Parts, same_ids: bool, reps: int, new_tokens: int) -> dict[str, Any]:
    result: dict[str, Any] = {"mode": "ask", "ms": [], "parts": [], "same_ids": same_ids}
    for _ in range(reps):
        started = time.perf_counter()
        result["answer_tokens"] = ask(new_tokens)
        result["ms"].append((time.perf_counter() - started) * 1000)
    for _ in range(reps):
        result["parts"].append(parts(new_tokens))
    return result


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        serve(json.load(f), sys.stdin, sys.stdout)

"""One engine in its own process: load, answer the same prompt ids, report timings as JSON.

Run by `benchmarks.run`: `python -m edgeqa.bench.worker SPEC.json`, where the spec names the
engine, the model path, the prompts (token ids), the forced number of new tokens and the modes.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

Generate = Callable[[list[list[int]], int], list[list[Any]]]  # (prompts, beams) -> each prompt's new tokens


def load_engine(
    engine: str, path: str, threads: int, new_tokens: int, tokenizer_path: str, session_config: dict | None = None
) -> Generate:
    """Load one engine; the returned function answers a batch and returns each prompt's new tokens."""
    if engine in ("pytorch", "optimum"):
        import torch

        torch.set_num_threads(threads)
        if engine == "pytorch":
            from transformers import T5ForConditionalGeneration

            model = T5ForConditionalGeneration.from_pretrained(path).eval()
        else:
            import onnxruntime as ort
            from optimum.onnxruntime import ORTModelForSeq2SeqLM

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            model = ORTModelForSeq2SeqLM.from_pretrained(path, use_cache=True, session_options=options)
            # Optimum sizes the first-step cache as d_model / heads (85 on flan-t5-small); T5's head size is d_kv.
            model.decoder.embed_size_per_head = model.config.d_kv

        def run(prompts: list[list[int]], beams: int) -> list[list[Any]]:
            ids, mask = _pad_torch(prompts)
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    num_beams=beams,
                    do_sample=False,
                    min_new_tokens=new_tokens,
                    max_new_tokens=new_tokens,
                )
            return [row[1:] for row in out.tolist()]

        return run
    if engine == "ctranslate2":
        import ctranslate2
        from tokenizers import Tokenizer

        translator = ctranslate2.Translator(
            path, device="cpu", compute_type="int8", intra_threads=threads, inter_threads=1
        )
        tokenizer = Tokenizer.from_file(tokenizer_path)

        def run(prompts: list[list[int]], beams: int) -> list[list[Any]]:
            tokens = [[tokenizer.id_to_token(i) for i in ids] for ids in prompts]
            results = translator.translate_batch(
                tokens,
                beam_size=beams,
                max_decoding_length=new_tokens,
                min_decoding_length=new_tokens,
                max_batch_size=len(tokens),
            )
            return [r.hypotheses[0] for r in results]

        return run
    if engine.startswith("edgeqa"):
        from edgeqa.runtime import QAModel

        model = QAModel.load(path, threads=threads, session_config=session_config)

        def run(prompts: list[list[int]], beams: int) -> list[list[Any]]:
            return model.generate(prompts, num_beams=beams, min_new_tokens=new_tokens, max_new_tokens=new_tokens)

        return run
    raise SystemExit(f"unknown engine {engine}")


def _pad_torch(prompts: list[list[int]]) -> tuple[Any, Any]:
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = torch.tensor(p)
        mask[row, : len(p)] = 1
    return ids, mask


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path, encoding="utf-8").read())
    started = spec["spawned_at"]
    load_start = time.time()
    run = load_engine(
        spec["engine"], spec["path"], spec["threads"], spec["new_tokens"], spec["tokenizer"], spec.get("session_config")
    )
    loaded = time.time()
    prompts: list[list[int]] = spec["prompts"]
    run(prompts[:1], 1)
    first_answer = time.time()
    result: dict[str, Any] = {"load_s": loaded - load_start, "cold_start_s": first_answer - started, "modes": {}}
    answers: dict[tuple[int, int], list[list[Any]]] = {}  # (batch, beams) -> every prompt's tokens
    for mode in spec["modes"]:
        batch, beams = mode["batch"], mode["beams"]
        run(prompts[:batch], beams)  # warm-up
        if batch == 1:
            times, tokens = [], []
            for p in prompts:
                t = time.perf_counter()
                tokens += run([p], beams)
                times.append((time.perf_counter() - t) * 1000)
            ordered = sorted(times)
            result["modes"][mode["name"]] = {
                "median_ms": statistics.median(times),
                "p90_ms": ordered[int(0.9 * (len(ordered) - 1))],
                "ms_per_token": statistics.median(times) / spec["new_tokens"],
                "tokens": statistics.mean(len(t) for t in tokens),
            }
        else:
            tokens = []
            t = time.perf_counter()
            for first in range(0, len(prompts), batch):
                tokens += run(prompts[first : first + batch], beams)
            elapsed = time.perf_counter() - t
            result["modes"][mode["name"]] = {
                "questions_per_s": len(prompts) / elapsed,
                "tokens": statistics.mean(len(t) for t in tokens),
            }
        answers[(batch, beams)] = tokens
        alone = answers.get((1, beams))
        if batch > 1 and alone is not None:
            # the same prompt's answer in a batch and alone: equal unless batching changes the numbers
            result["modes"][mode["name"]]["same_as_b1"] = sum(a == b for a, b in zip(tokens, alone, strict=True)) / len(
                prompts
            )
    from edgeqa.bench.machine import peak_rss_mb

    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])

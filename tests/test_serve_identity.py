"""A served answer is the runtime's answer: `/v1/answer` against `QAModel.answer` one at a time.

The detector is a flan-t5-small-shaped int8 artifact with random weights: its logits are full of
near-ties, so any difference in padding, batching or sampling between the server and the runtime
changes tokens (a second engine with its own padding differed on 4 of these 64 questions).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from serve_helpers import in_process  # noqa: E402

from conftest import SMALL, build_t5  # noqa: E402
from edgeqa.records import sample_data  # noqa: E402
from edgeqa.runtime import QAModel  # noqa: E402

NEW_TOKENS = 12
RUNS = 3


@pytest.fixture(scope="module")
def small_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgeqa.export import ExportConfig, export_artifact

    folder = tmp_path_factory.mktemp("small-int8")
    checkpoint = build_t5(folder / "checkpoint", seed=5, **SMALL)
    config = ExportConfig(checkpoint=str(checkpoint), output=folder / "int8", quantize="int8", parity=False)
    return export_artifact(config).output


@pytest.fixture(scope="module")
def mixed_questions() -> list[str]:
    rows = [json.loads(line) for line in sample_data("validation").read_text(encoding="utf-8").splitlines()]
    asked = [row["question"] for row in rows[:60]]
    asked += [" ".join(row["question"] for row in rows[i : i + 6]) for i in range(0, 24, 6)]  # long prompts
    assert len(asked) == 64 and len({len(q.split()) for q in asked}) > 15, "prompts of mixed lengths"
    return asked


def sampling(index: int, sampled: bool) -> dict:
    """The generation options of question `index`: greedy, or sampled with its own seed."""
    return {"do_sample": True, "seed": index, "temperature": 0.9, "top_k": 40} if sampled else {}


@pytest.mark.slow
@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "seeded-sampling"])
def test_served_answers_equal_the_runtime_alone_at_any_concurrency(small_int8, mixed_questions, sampled):
    questions = mixed_questions
    model = QAModel.load(small_int8, threads=2)
    expected = [
        model.answer(q, max_new_tokens=NEW_TOKENS, **sampling(i, sampled)).tokens for i, q in enumerate(questions)
    ]
    assert len({tuple(tokens) for tokens in expected}) > 32, "the random model must answer variously"

    async def body(app, http):
        async def ask(index: int) -> list[int]:
            payload = {"question": questions[index], "max_new_tokens": NEW_TOKENS, **sampling(index, sampled)}
            reply = await http.post("/v1/answer", json=payload)
            assert reply.status_code == 200, reply.text
            return reply.json()["tokens"]

        one_at_a_time = [await ask(i) for i in range(len(questions))]
        assert one_at_a_time == expected
        for run in range(RUNS):
            shift = 5 * run  # other neighbours each run
            order = list(range(shift, len(questions))) + list(range(shift))
            concurrent: dict[int, list[int]] = {}
            for first in range(0, len(order), 16):  # 16 callers at a time, mixed prompt lengths
                batch = order[first : first + 16]
                for index, tokens in zip(batch, await asyncio.gather(*(ask(i) for i in batch)), strict=True):
                    concurrent[index] = tokens
            differ = [i for i in range(len(questions)) if concurrent[i] != expected[i]]
            assert differ == [], f"run {run}: questions {differ} answered otherwise at concurrency 16"

    in_process(small_int8, model, body, max_batch_size=16, batch_wait_ms=20)

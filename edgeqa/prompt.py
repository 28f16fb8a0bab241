"""The prompt templates shared by training, export and the runtime.

A question alone is formatted with the prompt template (`{question}`); a question with a passage to
read with the context template (`{context}` and `{question}`). Both travel from `edgeqa finetune`
through the checkpoint to the artifact's manifest, and the runtime formats from the manifest only.
"""

from edgeqa.errors import ConfigError
from edgeqa.typed_json import whole_number

PROMPT_TEMPLATE = "Please answer this question: {question}"
#: FLAN's reading-comprehension template: the default for checkpoints fine-tuned without passages,
#: which FLAN-T5 was instruction-tuned to read (SQuAD and other "read this and answer" tasks).
CONTEXT_TEMPLATE = "Read this and answer the question\n\n{context}\n\n{question}"
#: What a reader answers from a passage that does not answer the question (FLAN's SQuAD 2.0 convention):
#: reading several passages, it passes over them.
NO_ANSWER = "unanswerable"
DEFAULT_MAX_INPUT_TOKENS = 128
DEFAULT_MAX_ANSWER_TOKENS = 512


#: Bounds no model needs to exceed. Fine-tuning and export refuse what the runtime would refuse to
#: read back from an artifact (`edgeqa.artifact_checks`), so every artifact they write loads.
MAX_TOKENS = 1 << 16  # input, answer and new tokens
MAX_BEAMS = 256
MAX_NO_ANSWER_CHARS = 200


def is_template(template: object) -> bool:
    """Whether `template` is a prompt template: a text with exactly one `{question}` field."""
    return isinstance(template, str) and template.count("{question}") == 1


def is_context_template(template: object) -> bool:
    """Whether `template` is a context template: a text with exactly one `{context}` and one `{question}` field."""
    return isinstance(template, str) and is_template(template) and template.count("{context}") == 1


def is_no_answer(text: object) -> bool:
    """Whether `text` can be the reader's "no answer": a text of 1 to `MAX_NO_ANSWER_CHARS` characters."""
    return isinstance(text, str) and bool(text.strip()) and len(text) <= MAX_NO_ANSWER_CHARS


def check_count(name: str, value: object, most: int) -> int:
    """`value` if it is a whole number from 1 to `most`, else a `ConfigError` naming `name`."""
    return whole_number(value, name, 1, most, ConfigError)


def check_template(template: str) -> str:
    """Return `template` if it has exactly one `{question}` field, else raise `ConfigError`."""
    if not is_template(template):
        raise ConfigError(
            f"prompt template {template!r} must contain the field {{question}} exactly once, e.g. {PROMPT_TEMPLATE!r}"
        )
    return template


def check_context_template(template: str) -> str:
    """Return `template` if it has exactly one `{context}` and one `{question}` field, else raise `ConfigError`."""
    if not is_context_template(template):
        raise ConfigError(
            f"context template {template!r} must contain the fields {{context}} and {{question}} exactly once each, "
            f"e.g. {CONTEXT_TEMPLATE!r}"
        )
    return template


def check_no_answer(text: str) -> str:
    """Return `text` if it can be the reader's "no answer", else raise `ConfigError`."""
    if not is_no_answer(text):
        got = f"{len(text)} characters" if isinstance(text, str) and text.strip() else repr(text)[:40]
        raise ConfigError(
            f"no_answer must be a text of 1 to {MAX_NO_ANSWER_CHARS} characters (e.g. {NO_ANSWER}), got {got}"
        )
    return text


def format_prompt(
    question: str,
    template: str = PROMPT_TEMPLATE,
    context: str | None = None,
    context_template: str = CONTEXT_TEMPLATE,
) -> str:
    """The model's input for a question (stripped of surrounding white space), with a passage to read
    when `context` is given (`context_template`), else alone (`template`)."""
    if context is None:
        return template.replace("{question}", question.strip())
    # one pass, so that a passage holding the text "{question}" is left as it is
    head, tail = context_template.split("{context}")
    parts = [part.replace("{question}", question.strip()) for part in (head, tail)]
    return parts[0] + context.strip() + parts[1]

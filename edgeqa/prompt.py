"""The prompt template shared by training, export and the runtime."""

from edgeqa.errors import ConfigError

PROMPT_TEMPLATE = "Please answer this question: {question}"
DEFAULT_MAX_INPUT_TOKENS = 128
DEFAULT_MAX_ANSWER_TOKENS = 512


def check_template(template: str) -> str:
    """Return `template` if it has exactly one `{question}` field, else raise `ConfigError`."""
    if template.count("{question}") != 1:
        raise ConfigError(
            f"prompt template {template!r} must contain the field {{question}} exactly once, e.g. {PROMPT_TEMPLATE!r}"
        )
    return template


def format_prompt(question: str, template: str = PROMPT_TEMPLATE) -> str:
    """Fill the template with a question (stripped of surrounding white space)."""
    return template.replace("{question}", question.strip())

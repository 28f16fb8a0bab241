"""Prompt encoding and answer decoding with `tokenizers` (no transformers)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from edgeqa.artifact_checks import read_member, shown
from edgeqa.errors import ArtifactError, InputError
from edgeqa.manifest import Manifest
from edgeqa.prompt import format_prompt
from edgeqa.runtime.inputs import check_batch, check_question

logger = logging.getLogger(__name__)

# transformers' `clean_up_tokenization`, applied where the checkpoint's tokenizer applied it (the manifest says).
_CLEANUPS = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


class PromptTokenizer:
    """Turns questions into prompt ids and answer ids into text, as training did."""

    def __init__(self, path: Path, manifest: Manifest):
        entry = manifest.files["tokenizer"]
        data = read_member(path.parent, path.name, "files.tokenizer", entry.size)
        try:
            self._tokenizer = Tokenizer.from_str(data.decode("utf-8"))
        except BaseException as e:  # a bare Exception on bad JSON; a Rust panic (no Exception) on bad data
            if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
                raise  # KeyboardInterrupt, SystemExit
            raise ArtifactError(
                f"{path.name} cannot be read as a tokenizer ({shown(str(e), 160)}); re-export the artifact"
            ) from e
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(manifest.max_input_tokens)
        self._template = manifest.prompt_template
        self._context_template = manifest.context_template
        self._cleanup = manifest.clean_up_tokenization_spaces
        self.max_input_tokens = manifest.max_input_tokens
        self._check_vocabulary(manifest)

    def _check_vocabulary(self, manifest: Manifest) -> None:
        vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        special = manifest.special_tokens
        problems = []
        if manifest.tokenizer_vocab_size and vocab != manifest.tokenizer_vocab_size:
            problems.append(f"it has {vocab} tokens, the manifest says {manifest.tokenizer_vocab_size}")
        if vocab > manifest.dims.vocab_size:
            problems.append(f"it has {vocab} tokens but the model only {manifest.dims.vocab_size} outputs")
        if self._tokenizer.id_to_token(special.eos) != "</s>" or self._tokenizer.id_to_token(special.pad) != "<pad>":
            problems.append(f"ids {special.pad}/{special.eos} are not <pad>/</s>")
        if problems:
            raise ArtifactError(
                "the artifact's tokenizer does not match its model: "
                + "; ".join(problems)
                + "; re-export with the checkpoint's own tokenizer"
            )

    def encode(self, questions: list[str], contexts: Sequence[str | None] | None = None) -> list[list[int]]:
        """Prompt ids for each question (see `encode_checked`)."""
        return [ids for ids, _ in self.encode_checked(questions, contexts)]

    def encode_checked(
        self, questions: list[str], contexts: Sequence[str | None] | None = None
    ) -> list[tuple[list[int], bool]]:
        """Prompt ids for each question and whether they were truncated to `max_input_tokens`.

        A question alone is cut to the limit, with a warning; a question with a passage to read
        (`contexts[i]` not None) is never cut: the passage could lose what answers it.

        Raises:
            InputError: a question or passage that is not a string or is empty, or a question and passage
                over the input limit (naming it).
        """
        if contexts is None:
            contexts = [None] * len(questions)
        contexts = check_batch(contexts, "encoding", "contexts", "give one per question (None for none)")
        if len(contexts) != len(questions):
            raise InputError(f"{len(questions)} questions but {len(contexts)} contexts; give one context per question")
        prompts = []
        for question, context in zip(questions, contexts, strict=True):
            if not check_question(question).strip():
                raise InputError('the question is empty; ask something, e.g. "What is the capital of France?"')
            if context is not None and not isinstance(context, str):
                raise InputError(f"a context must be a string (the passage to read), got {type(context).__name__}")
            if context is not None and not context.strip():
                raise InputError("the context is empty; give the passage to read, or no context at all")
            for name, text in (("question", question), ("context", context)):
                if text is not None and not _encodable(text):
                    raise InputError(
                        f"the {name} holds bytes that are not text (not UTF-8, as from a terminal in another "
                        "encoding); give it as UTF-8"
                    )
            prompts.append(format_prompt(question, self._template, context, self._context_template))
        encodings = self._tokenizer.encode_batch(prompts)
        ids = []
        for question, context, prompt, encoding in zip(questions, contexts, prompts, encodings, strict=True):
            if encoding.overflowing and context is not None:
                raise InputError(
                    f"the question and its passage are {self.count(prompt)} tokens, over the model's limit of "
                    f"{self.max_input_tokens} input tokens (the question alone is {self.count(question) - 1}); "
                    "shorten the question or the passage (an index built with `edgeqa index --artifact` leaves "
                    "room for a short question beside each passage)"
                )
            if encoding.overflowing:
                logger.warning(
                    "question of %d characters was truncated to the model's %d input tokens",
                    len(question),
                    self.max_input_tokens,
                )
            ids.append((encoding.ids, bool(encoding.overflowing)))
        return ids

    def count(self, text: str) -> int:
        """Tokens of `text` as the model's input (end token included), however long (for messages: it copies
        the tokenizer, whose truncation other threads rely on)."""
        whole = Tokenizer.from_str(self._tokenizer.to_str())
        whole.no_truncation()
        return len(whole.encode(text).ids)

    @property
    def rewritten(self) -> tuple[str, ...]:
        """Text that decoding rewrites (transformers' clean-up: " ." -> "."), if the tokenizer cleans up."""
        return tuple(before for before, _ in _CLEANUPS) if self._cleanup else ()

    def decode(self, ids: list[int]) -> str:
        text = self._tokenizer.decode(ids, skip_special_tokens=True)
        if self._cleanup:
            for before, after in _CLEANUPS:
                text = text.replace(before, after)
        return text.strip()


def _encodable(text: str) -> bool:
    """Whether `text` is text: Python keeps undecodable bytes of argv and stdin as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True

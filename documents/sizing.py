"""Which tokenizer measures passages and how many tokens each may hold: from an artifact, a tokenizer.json,
or the bundled FLAN-T5 tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeqa.documents.split import DEFAULT_PASSAGE_TOKENS, passage_budget
from edgeqa.documents.store import load_tokenizer
from edgeqa.errors import ConfigError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from edgeqa.manifest import Manifest


def bundled_tokenizer() -> Path:
    """The FLAN-T5 tokenizer.json shipped with edgeqa: the default when neither an artifact nor a tokenizer is given."""
    import edgeqa

    return Path(edgeqa.__file__).resolve().parent / "assets" / "flan-t5-tokenizer" / "tokenizer.json"


@dataclass(frozen=True)
class Sizing:
    """How passages are measured.

    Attributes:
        tokenizer: The tokenizer.json that counts tokens.
        tokenizer_name: The label the index records with its sha256.
        passage_tokens: The most tokens a passage holds; None keeps an index's own with `--update`.
    """

    tokenizer: Path
    tokenizer_name: str
    passage_tokens: int | None


def resolve_sizing(
    artifact: Path | None = None, tokenizer: Path | None = None, passage_tokens: int | None = None, update: bool = False
) -> Sizing:
    """The tokenizer and passage size for `edgeqa index`.

    With an artifact, its tokenizer and its `max_input_tokens` less the prompt and room for a question;
    else the tokenizer given (or the bundled FLAN-T5 one) and `DEFAULT_PASSAGE_TOKENS`. An explicit
    `passage_tokens` wins; with `update` (an existing index updated), the index keeps its own unless one is given.

    Raises:
        ConfigError: both an artifact and a tokenizer, or an artifact whose limit leaves no room for a passage.
        ArtifactError: the artifact's manifest is missing or invalid.
    """
    if artifact is not None and tokenizer is not None:
        raise ConfigError("give --artifact or --tokenizer, not both (the artifact brings its tokenizer)")
    if artifact is not None:
        from edgeqa.manifest import Manifest

        manifest = Manifest.read(artifact)
        path = Path(artifact) / manifest.files["tokenizer"].path
        if passage_tokens is None and not update:
            passage_tokens = reader_passage_tokens(manifest, load_tokenizer(path))
        return Sizing(path, f"artifact {Path(artifact).name}", passage_tokens)
    if tokenizer is not None:
        return Sizing(Path(tokenizer), str(tokenizer), passage_tokens)
    size = passage_tokens if passage_tokens is not None or update else DEFAULT_PASSAGE_TOKENS
    return Sizing(bundled_tokenizer(), "flan-t5 (bundled)", size)


def reader_passage_tokens(manifest: Manifest, tokenizer: Tokenizer) -> int:
    """The longest passage an artifact (its `manifest`, its `tokenizer`) reads beside a question: its input
    limit less the prompt and room for a question, in its own tokens.

    Raises:
        ConfigError: the limit leaves no room for a passage.
    """
    return passage_budget(manifest.max_input_tokens, tokenizer, manifest.context_template)

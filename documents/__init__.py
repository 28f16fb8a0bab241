"""Answers from your own documents: `build_index` turns files into passages in a SQLite FTS5 file, `Index`
finds the passages that match a question (BM25), `DocumentsQA` answers from them with a reader artifact.
Standard library and `tokenizers` (the reader: the runtime; PDF: `pypdf`).

Names load on first use, so that importing one module of the package (the CLI imports
`edgeqa.documents.answers`) does not load the indexer and `tokenizers`.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what __getattr__ returns, for type checkers
    from edgeqa.documents.answers import NO_PASSAGE, NOT_ANSWERED, Candidate, DocumentAnswer, choose
    from edgeqa.documents.build import build_index
    from edgeqa.documents.query import Index, Passage, fts_query
    from edgeqa.documents.reader import DocumentsQA
    from edgeqa.documents.split import DEFAULT_PASSAGE_TOKENS, passage_budget
    from edgeqa.documents.store import FORMAT_VERSION, IndexInfo, load_tokenizer, tokenizer_sha256
    from edgeqa.documents.summary import IndexSummary, Progress

_LAZY = {
    "NO_PASSAGE": "answers",
    "NOT_ANSWERED": "answers",
    "Candidate": "answers",
    "DocumentAnswer": "answers",
    "choose": "answers",
    "build_index": "build",
    "load_tokenizer": "store",
    "Index": "query",
    "Passage": "query",
    "fts_query": "query",
    "DocumentsQA": "reader",
    "DEFAULT_PASSAGE_TOKENS": "split",
    "passage_budget": "split",
    "FORMAT_VERSION": "store",
    "IndexInfo": "store",
    "tokenizer_sha256": "store",
    "IndexSummary": "summary",
    "Progress": "summary",
}

__all__ = [
    "DEFAULT_PASSAGE_TOKENS",
    "FORMAT_VERSION",
    "NOT_ANSWERED",
    "NO_PASSAGE",
    "Candidate",
    "DocumentAnswer",
    "DocumentsQA",
    "Index",
    "IndexInfo",
    "IndexSummary",
    "Passage",
    "Progress",
    "build_index",
    "choose",
    "fts_query",
    "load_tokenizer",
    "passage_budget",
    "tokenizer_sha256",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)

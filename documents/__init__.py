"""Answers from your own documents: `build_index` turns files into passages in a SQLite FTS5 file, `Index`
finds the passages that match a question (BM25), `DocumentsQA` answers from them with a reader artifact.
Standard library and `tokenizers` (the reader: the runtime; PDF: `pypdf`)."""

from edgeqa.documents.answers import NO_PASSAGE, NOT_ANSWERED, Candidate, DocumentAnswer, choose
from edgeqa.documents.build import build_index, load_tokenizer
from edgeqa.documents.query import Index, Passage, fts_query
from edgeqa.documents.reader import DocumentsQA
from edgeqa.documents.split import DEFAULT_PASSAGE_TOKENS, passage_budget
from edgeqa.documents.store import FORMAT_VERSION, IndexInfo, tokenizer_sha256
from edgeqa.documents.summary import IndexSummary, Progress

__all__ = [
    "DEFAULT_PASSAGE_TOKENS",
    "NOT_ANSWERED",
    "NO_PASSAGE",
    "Candidate",
    "DocumentAnswer",
    "DocumentsQA",
    "FORMAT_VERSION",
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

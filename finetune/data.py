"""Question-answering data: load from the hub or local files, check columns, split, tokenize."""

from __future__ import annotations

import codecs
import json
import logging
import os
from pathlib import Path
from typing import Any

from edgeqa.errors import DataError, first_line
from edgeqa.finetune.config import FinetuneConfig
from edgeqa.prompt import format_prompt

logger = logging.getLogger(__name__)

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}

# The tutorial's `yahoo_answers_qa` is a loading script (datasets 4+ refuses those) that downloads this
# one file: a JSON list of 87,362 {id, question, answer, nbestanswers, main_category} records.
YAHOO_ANSWERS = "yahoo_answers_qa"
YAHOO_ANSWERS_URL = "https://ciir.cs.umass.edu/downloads/nfL6/nfL6.json.gz"
YAHOO_ANSWERS_URL_ENV = "EDGEQA_YAHOO_ANSWERS_URL"


def yahoo_answers_source() -> str:
    """Where `--data yahoo_answers_qa` reads nfL6.json(.gz): the dataset's URL, or `$EDGEQA_YAHOO_ANSWERS_URL`."""
    return os.environ.get(YAHOO_ANSWERS_URL_ENV) or YAHOO_ANSWERS_URL


def _local_files(path: Path) -> dict[str, str]:
    """Split name -> file, for one file (all train) or a folder of train/validation/test files."""
    if path.is_file():
        if path.suffix.lower() not in FORMATS:
            raise DataError(f"{path} has an unsupported type; use one of {', '.join(FORMATS)}")
        if path.stat().st_size == 0:
            raise DataError(f"data file {path} is empty")
        return {"train": str(path)}
    found: dict[str, str] = {}
    for child in sorted(path.iterdir()):
        for split, names in SPLIT_NAMES.items():
            if child.stem.lower() in names and child.suffix.lower() in FORMATS:
                if child.stat().st_size == 0:
                    raise DataError(f"data file {child} is empty")
                if split in found:
                    raise DataError(
                        f"folder {path} has two {split} files, {Path(found[split]).name} and {child.name}; "
                        "keep one of them there"
                    )
                found[split] = str(child)
    if "train" not in found:
        raise DataError(
            f"folder {path} has no train file; expected train.jsonl / train.csv / train.parquet, not compressed "
            "(and optionally validation.* and test.*)"
        )
    return found


def _check_file(path: Path) -> None:
    """Refuse a JSON or CSV file that is not UTF-8, or a JSON Lines line that is not a JSON object, naming the
    line: datasets would fail later, with a traceback when a record is read or a message without the line."""
    _check_utf8(path)
    with open(path, encoding="utf-8-sig") as f:
        array = f.read(4096).lstrip().startswith("[")  # a JSON array, as datasets also reads a .jsonl
    if path.suffix.lower() == ".jsonl" and not array:
        _check_json_lines(path)


def _check_utf8(path: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:  # e.object: the bytes decoded, a character cut by the last read first
                line += e.object[: e.start].count(b"\n")
                raise DataError(
                    f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} on line {line}); save it as UTF-8"
                ) from None
            line += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text (it ends inside a character); save it as UTF-8") from None


def _check_json_lines(path: Path) -> None:
    with open(path, encoding="utf-8-sig") as lines:
        for number, text in enumerate(lines, start=1):
            try:
                record = json.loads(text) if text.strip() else {}
            except (json.JSONDecodeError, RecursionError) as e:
                reason = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                raise DataError(f"line {number} of {path} is not valid JSON ({reason}); fix or remove it") from None
            if not isinstance(record, dict):
                raise DataError(f"line {number} of {path} is not a JSON object with question and answer fields")


def load_raw(config: FinetuneConfig) -> Any:
    """Load the data as a `datasets.DatasetDict` with at least a train split."""
    import datasets

    path = Path(config.data)
    try:
        if path.exists():
            files = _local_files(path)
            kinds = {FORMATS[Path(f).suffix.lower()] for f in files.values()}
            if len(kinds) > 1:
                raise DataError(f"files in {path} mix formats ({', '.join(sorted(kinds))}); use one format")
            kind = kinds.pop()
            for file in files.values() if kind != "parquet" else ():  # Parquet is binary, checked by its reader
                _check_file(Path(file))
            # a CSV's None, NA or N/A is an answer (pandas would read them as missing)
            options = {"keep_default_na": False} if kind == "csv" else {}
            raw = datasets.load_dataset(kind, data_files=files, **options)
        elif config.data == YAHOO_ANSWERS:
            raw = _load_yahoo_answers(datasets)
        elif path.suffix.lower() in FORMATS:
            raise DataError(f"data file {config.data} does not exist")
        else:
            raw = datasets.load_dataset(config.data)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types for unreadable or unreachable data
        raise DataError(_explain_load_failure(config.data, e)) from e
    if not isinstance(raw, datasets.DatasetDict) or "train" not in raw:
        raise DataError(f"{config.data} has no train split")
    if len(raw["train"]) == 0:
        raise DataError(f"{config.data} holds no training records")
    return raw


def _load_yahoo_answers(datasets: Any) -> Any:
    """The tutorial's data without its loading script: datasets' json builder on nfL6.json.gz."""
    source = yahoo_answers_source()
    try:
        return datasets.load_dataset("json", data_files={"train": source})
    except Exception as e:  # offline, unreachable mirror, missing local copy, truncated download
        raise DataError(
            f"cannot load {YAHOO_ANSWERS} from {source} ({type(e).__name__}: {first_line(e)}); it needs the network, "
            f"or a local copy of nfL6.json.gz: set {YAHOO_ANSWERS_URL_ENV}=/path/to/nfL6.json.gz (or a mirror's URL) "
            "or pass --data nfL6.json"
        ) from e


def _root_cause(error: BaseException) -> BaseException:
    seen = {id(error)}
    while (inner := error.__cause__ or error.__context__) is not None and id(inner) not in seen:
        error = inner
        seen.add(id(error))
    return error


def _explain_load_failure(name: str, error: Exception) -> str:
    message = str(error)
    if "script" in message.lower():
        return (
            f"{name} is a loading-script dataset, which datasets 4+ refuses to run. Download its data file "
            "and pass it instead: --data data.jsonl (JSONL, JSON, CSV or Parquet)"
        )
    if Path(name).exists():
        cause = _root_cause(error)  # datasets wraps the reader's error in "An error occurred while generating..."
        if "corresponds to no data" in str(cause):
            return f"{name} holds no records (a header or blank lines only); give question and answer records"
        return (
            f"cannot read {name}: {first_line(cause)}; check that every file is JSON Lines, JSON, CSV or Parquet, "
            "with the same columns in each"
        )
    return (
        f"cannot load dataset {name!r} from the hub ({type(error).__name__}: {first_line(error)}). "
        "Offline, pass a local file or folder: --data train.jsonl (JSONL, JSON, CSV or Parquet with "
        "question and answer columns)"
    )


def check_columns(raw: Any, config: FinetuneConfig) -> None:
    columns = raw["train"].column_names
    flags = [("--question-column", config.question_column), ("--answer-column", config.answer_column)]
    if config.context_column is not None:
        flags.append(("--context-column", config.context_column))
    for flag, column in flags:
        if column not in columns:
            raise DataError(
                f"column {column!r} ({flag}) is not in {config.data}; it needs to be one of: {', '.join(columns)}"
            )


def prepare_splits(raw: Any, config: FinetuneConfig) -> tuple[Any, Any]:
    """Train and validation splits: the data's own validation split, else a seeded hold-out."""
    check_columns(raw, config)
    required = [config.question_column, config.answer_column]
    keep = required + ([config.context_column] if config.context_column else [])
    train = raw["train"]
    if "validation" in raw:
        validation = raw["validation"]
    else:
        if len(train) < 2:
            raise DataError(f"{config.data} has {len(train)} record(s); at least 2 are needed to hold some out")
        try:
            parts = train.train_test_split(test_size=config.validation_fraction, seed=config.seed)
        except ValueError as e:  # datasets: a split that leaves one side empty
            raise DataError(
                f"{config.data} has {len(train)} records: --validation-fraction {config.validation_fraction} leaves "
                "none to train on or none to validate; give more records, another fraction or a validation split"
            ) from e
        train, validation = parts["train"], parts["test"]
    train, validation = _usable(train.select_columns(keep), config), _usable(validation.select_columns(keep), config)
    if config.max_train_samples:
        train = train.select(range(min(config.max_train_samples, len(train))))
    if config.max_eval_samples:
        validation = validation.select(range(min(config.max_eval_samples, len(validation))))
    if len(train) == 0 or len(validation) == 0:
        raise DataError(f"{config.data} leaves no usable train or validation records after removing empty ones")
    logger.info("data: %d training and %d validation records", len(train), len(validation))
    return train, validation


def _usable(split: Any, config: FinetuneConfig) -> Any:
    """The records training can use: a record with a passage and no answer (SQuAD 2.0's unanswerable
    questions) answers `no_answer`; one still without a question or an answer is left out, with a warning.
    Numbers in the answer column (years, counts) are answers, as text."""
    from datasets import Value

    for column in (config.question_column, config.answer_column):
        kind = split.features[column]
        if isinstance(kind, Value) and kind.dtype not in ("string", "large_string"):
            split = split.cast_column(column, Value("string"))
        elif not isinstance(kind, Value):  # a column of mixed types (datasets' Json): its numbers as text
            features = split.features.copy()
            features[column] = Value("string")
            split = split.map(_numbers_as_text, fn_kwargs={"column": column}, features=features, desc="answers")
    if config.context_column is not None:
        split = split.map(_unanswerable, fn_kwargs={"config": config}, desc="unanswerable records")
    required = [config.question_column, config.answer_column]
    kept = split.filter(_complete, fn_kwargs={"keep": required}, desc="complete records")
    if 0 < len(kept) < len(split):
        dropped = len(split) - len(kept)
        logger.warning(
            "data: left out %d of %d records whose question or answer is missing, empty or not text (a list, "
            "an object)",
            dropped,
            len(split),
        )
    return kept


def _numbers_as_text(row: dict, column: str) -> dict:
    value = row[column]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {column: str(value)}
    return {column: value if isinstance(value, str) else None}


def _unanswerable(row: dict, config: FinetuneConfig) -> dict:
    answer, context = row[config.answer_column], row[config.context_column]
    missing = answer is None or (isinstance(answer, str) and not answer.strip())  # a number is an answer
    if _text(context) and missing:
        answer = config.no_answer
    return {config.answer_column: answer}


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _complete(row: dict, keep: list[str]) -> bool:
    return all(_text(row[k]) for k in keep)


def prompts(batch: dict[str, list[Any]], config: FinetuneConfig) -> list[str]:
    """The model's input for each record of a batch: with its passage where it has one."""
    questions = batch[config.question_column]
    return [
        format_prompt(q, config.prompt_template, c, config.context_template)
        for q, c in zip(questions, _contexts(batch, config), strict=True)
    ]


def _contexts(batch: dict[str, list[Any]], config: FinetuneConfig) -> list[str | None]:
    """Each record's passage, None where it has none."""
    if config.context_column is None:
        return [None] * len(batch[config.question_column])
    return [c if isinstance(c, str) and c.strip() else None for c in batch[config.context_column]]


def tokenize(split: Any, tokenizer: Any, config: FinetuneConfig) -> Any:
    """Prompt ids and label ids (padding is left to the collator). Questions alone are cut to
    max_source_tokens; a record whose question and passage exceed it is left out (with a warning), never
    cut: the cut could remove what answers it."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        texts = prompts(batch, config)
        features = tokenizer(texts, max_length=config.max_source_tokens, truncation=True)
        if config.context_column is not None:
            lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
            features["passage_cut"] = [
                context is not None and length > config.max_source_tokens
                for context, length in zip(_contexts(batch, config), lengths, strict=True)
            ]
        labels = tokenizer(
            text_target=batch[config.answer_column], max_length=config.max_target_tokens, truncation=True
        )
        features["labels"] = labels["input_ids"]
        return features

    encoded = split.map(encode, batched=True, remove_columns=split.column_names, desc="tokenizing")
    if config.context_column is None:
        return encoded
    fits = encoded.filter(lambda row: not row["passage_cut"], desc="checking lengths").remove_columns("passage_cut")
    if len(fits) == 0:
        raise DataError(
            f"every record's question and passage exceed max_source_tokens ({config.max_source_tokens}); "
            "raise --max-source-tokens or give shorter passages"
        )
    if len(fits) < len(encoded):
        logger.warning(
            "left out %d of %d records whose question and passage exceed max_source_tokens (%d); "
            "raise --max-source-tokens or give shorter passages",
            len(encoded) - len(fits),
            len(encoded),
            config.max_source_tokens,
        )
    return fits


def heldout_record(row: dict[str, Any], config: FinetuneConfig, tokenizer: Any) -> dict[str, str] | None:
    """A validation record as the export's parity gate reads it (question, answer, and its passage where it
    has one); None for a record whose question and passage exceed max_source_tokens (training left it out)."""
    record = {"question": row[config.question_column], "answer": row[config.answer_column]}
    batch = {key: [value] for key, value in row.items()}
    [context] = _contexts(batch, config)
    if context is None:
        return record
    [prompt] = prompts(batch, config)
    if len(tokenizer(prompt)["input_ids"]) > config.max_source_tokens:
        return None
    return record | {"context": context}

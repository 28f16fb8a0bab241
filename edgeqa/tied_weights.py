"""Whether a T5 checkpoint's `lm_head` is its own or the word embedding, read from its files (stdlib only).

transformers 4.x reads one flag, `tie_word_embeddings` in config.json (default true): tied, the
`lm_head` *is* the embedding and the decoder's output is scaled by 1/sqrt(d_model) (original T5);
untied, the checkpoint's own `lm_head.weight` is used and nothing is scaled (FLAN-T5, T5 v1.1).
transformers 5.x always ties in its config, keeps a stored `lm_head.weight` that differs from the
embedding, and reads the scaling from `scale_decoder_outputs` (saved as true unless the loaded
config said untied). A checkpoint saved by 5.x can thus say tied over an own `lm_head`, which 4.x
then replaces: a different model. `tie_problem` names such contradictions; `edgeqa finetune`
writes the setting that matches the weights (`explicit_tie_setting`), `edgeqa export` refuses the rest.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgeqa.atomic import write_atomic
from edgeqa.errors import ModelError

LM_HEAD, EMBEDDING = "lm_head.weight", "shared.weight"
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
_CHUNK = 1 << 24


def _tensor_files(folder: Path) -> dict[str, Path] | None:
    """Tensor name -> the safetensors file holding it; None where the weights are not safetensors."""
    if (folder / SAFETENSORS).is_file():
        return {name: folder / SAFETENSORS for name in _header(folder / SAFETENSORS)}
    if (folder / SAFETENSORS_INDEX).is_file():
        with _damaged(folder / SAFETENSORS_INDEX):
            weight_map = json.loads((folder / SAFETENSORS_INDEX).read_text(encoding="utf-8"))["weight_map"]
            return {name: folder / file for name, file in weight_map.items()}
    return None


def _header(path: Path) -> dict[str, Any]:
    with _damaged(path), path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > path.stat().st_size - 8:
            raise ValueError(f"its header claims {size} bytes")
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        if not all(isinstance(entry, dict) and "data_offsets" in entry for entry in header.values()):
            raise ValueError("its header lists no tensors")
        return header


@contextmanager
def _damaged(path: Path) -> Iterator[None]:
    """A weights file that cannot be read as safetensors (truncated, overwritten) as one `ModelError`."""
    try:
        yield
    except OSError as e:  # a file missing or not readable: not a damaged one
        raise ModelError(f"cannot read {e.filename or path}: {e.strerror or e}") from e
    except (struct.error, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ModelError(
            f"{path} is truncated or not a safetensors file ({type(e).__name__}); copy or save the checkpoint again"
        ) from e


def _same_tensor(first: Path, second: Path, name_a: str, name_b: str) -> bool:
    """Whether two stored tensors have the same dtype, shape and bytes (read in chunks)."""
    a, b = _header(first)[name_a], _header(second)[name_b]
    if (a["dtype"], a["shape"]) != (b["dtype"], b["shape"]):
        return False
    spans = [(path, 8 + _header_size(path) + entry["data_offsets"][0]) for path, entry in ((first, a), (second, b))]
    length = a["data_offsets"][1] - a["data_offsets"][0]
    with spans[0][0].open("rb") as fa, spans[1][0].open("rb") as fb:
        fa.seek(spans[0][1])
        fb.seek(spans[1][1])
        while length > 0:
            step = min(length, _CHUNK)
            if fa.read(step) != fb.read(step):
                return False
            length -= step
    return True


def _header_size(path: Path) -> int:
    with path.open("rb") as f:
        return int(struct.unpack("<Q", f.read(8))[0])


def own_lm_head(folder: str | Path) -> bool | None:
    """True where the weights store an `lm_head.weight` that differs from the embedding; False where
    they store none or the embedding's copy; None where they are not safetensors (not read)."""
    folder = Path(folder)
    files = _tensor_files(folder)
    if files is None:
        return None
    if LM_HEAD not in files:
        return False
    if EMBEDDING not in files:
        return True
    return not _same_tensor(files[LM_HEAD], files[EMBEDDING], LM_HEAD, EMBEDDING)


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))


def tie_problem(folder: str | Path) -> str | None:
    """What contradicts between a local T5 checkpoint's tie setting and its weights, as one sentence
    with the fix; None where they agree (or the weights cannot be read without loading them)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        return None
    config = _config(folder)
    if config.get("model_type") not in ("t5", "mt5"):
        return None
    own = own_lm_head(folder)
    tied = config.get("tie_word_embeddings", True)  # transformers 4.x's default
    scaled = config.get("scale_decoder_outputs")  # written by transformers 5.x only
    where = folder / "config.json"
    if own and scaled:
        return (
            f"{where} scales the decoder's outputs (scale_decoder_outputs) over an lm_head of the checkpoint's own, "
            "which transformers 4.x cannot load as one model; re-save it untied and unscaled or tied to the embedding"
        )
    if own and tied:
        return (
            f"{where} says tie_word_embeddings is true, but the checkpoint's lm_head.weight differs from its "
            "embedding (shared.weight): transformers 4.x would replace the lm_head by the embedding and scale the "
            "outputs, a different model; the checkpoint has its own lm_head (as FLAN-T5 does): set "
            '"tie_word_embeddings": false there'
        )
    if own is False and not tied:
        return (
            f"{where} says tie_word_embeddings is false (its own lm_head), but the weights hold no lm_head.weight "
            "of its own: the lm_head would be left random; set it to true or save the model with its lm_head"
        )
    if tied and scaled is False:
        return (
            f"{where} says tie_word_embeddings is true but scale_decoder_outputs is false: transformers 4.x would "
            "scale the outputs and 5.x would not; re-save the model with its own lm_head and tie_word_embeddings false"
        )
    return None


def explicit_tie_setting(folder: str | Path) -> bool | None:
    """Write the tie setting that matches the saved weights into `folder`'s config.json, as both
    transformers lines read it: false for an own `lm_head` (FLAN-T5), true where the `lm_head` is the
    embedding. Returns the setting, or None where the weights are not safetensors (left as they are).

    The scaling (`scale_decoder_outputs`, from transformers 5.x) is left as trained; `tie_problem`
    then tells whether the two settings together still mean one model under both lines.
    """
    folder = Path(folder)
    own = own_lm_head(folder)
    if own is None:
        return None
    config = _config(folder)
    config["tie_word_embeddings"] = not own
    path = folder / "config.json"
    write_atomic(path, json.dumps(config, indent=2) + "\n")
    return not own

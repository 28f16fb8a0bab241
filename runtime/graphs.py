"""The two ONNX graphs of an artifact (encoder, decoder step) behind a step-by-step interface."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeqa.artifact_checks import open_member, shown
from edgeqa.cpu import has_vnni, physical_cores
from edgeqa.errors import ArtifactError, ConfigError
from edgeqa.manifest import QUESTIONS_DIM, ActivationGranularity, Manifest, WeightType, cache_names
from edgeqa.runtime.inputs import check_threads
from edgeqa.runtime.onnx_refs import check_graph_files

INT4_MIN_ONNXRUNTIME = (1, 20)
# Per-token int8 graphs quantize each token row with opset 21's blocked QuantizeLinear, which
# onnxruntime's CPU kernels support from 1.19 (microsoft/onnxruntime#20977; tested on 1.32).
PER_TOKEN_MIN_ONNXRUNTIME = (1, 19)
# The decoder graph's attention is MultiHeadAttention with its attention_bias input (`export.attention`).
GRAPHS_MIN_ONNXRUNTIME = (1, 20)

logger = logging.getLogger(__name__)


def _installed() -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", ort.__version__)[:2])


def _check_runtime_supports(manifest: Manifest) -> None:
    """Refuse an int4 or per-token int8 artifact on an onnxruntime without its operators, with the fix."""
    quantization = manifest.quantization
    if quantization is None:
        return
    installed = _installed()
    if quantization.is_int4 and installed < INT4_MIN_ONNXRUNTIME:
        raise ArtifactError(
            f"this artifact has int4 weights (MatMulNBits), which need onnxruntime "
            f"{'.'.join(map(str, INT4_MIN_ONNXRUNTIME))} or newer; this is {ort.__version__}: "
            "pip install -U onnxruntime, or use an int8 artifact"
        )
    if quantization.activation_granularity == ActivationGranularity.PER_TOKEN and installed < PER_TOKEN_MIN_ONNXRUNTIME:
        raise ArtifactError(
            f"this artifact quantizes activations per token (opset 21), which needs onnxruntime "
            f"{'.'.join(map(str, PER_TOKEN_MIN_ONNXRUNTIME))} or newer; this is {ort.__version__}: "
            "pip install -U onnxruntime"
        )


def warn_if_saturating(manifest: Manifest) -> str | None:
    """Warn (and return the warning) when full-range int8 weights from a VNNI CPU meet a CPU without VNNI.

    Without VNNI, onnxruntime's u8 x s8 products go through saturating 16-bit sums
    (`vpmaddubsw`), which full 8-bit weights overflow (onnxruntime #5849, #6004): 7-bit weights
    (`reduce_range`, what the export picks on such CPUs) do not.
    """
    quantization = manifest.quantization
    if quantization is None or quantization.weight_type != WeightType.INT8 or quantization.reduce_range:
        return None
    exported = quantization.export_cpu
    if exported is None or not exported.vnni or has_vnni():
        return None
    message = (
        f"this artifact's int8 weights use the full 8-bit range (exported on a VNNI CPU, preset "
        f"{quantization.preset}); this CPU has no VNNI, where such products can saturate and answers "
        "degrade: re-export on this machine, or with --preset avx2 (7-bit weights)"
    )
    logger.warning(message)
    return message


def _map_shared_tensors(folder: Path, manifest: Manifest) -> list[tuple[dict[str, str], ort.OrtValue]]:
    """Map each weight stored once for both graphs (the embedding table), as one tensor for both sessions."""
    shared = []
    for tensor in manifest.shared_tensors:  # dtype and shape match the file's size (`check_manifest`)
        entry = manifest.files[tensor.role]
        with open_member(folder, entry.path, f"files.{tensor.role}") as f:
            mapped = np.memmap(f, dtype=np.dtype(tensor.dtype), mode="r", shape=tuple(tensor.shape))
        shared.append((tensor.names, ort.OrtValue.ortvalue_from_numpy(mapped)))
    return shared


@dataclass
class DecoderState:
    """What one generation carries between decoder steps.

    The cross-attention keys/values come from the encoder graph and are only read; the
    self-attention cache starts empty and grows by one position a step. With `shared_cross` (a
    graph from `export/shared_cross_cache.py`) the cross cache and the encoder mask hold one row a
    question, which its `beams` decoder rows (next to each other) share; otherwise one a decoder row.
    """

    encoder_mask: np.ndarray
    cross_cache: list[np.ndarray]
    self_cache: list[np.ndarray]
    shared_cross: bool = False
    beams: int = 1

    @property
    def rows_per_cross_row(self) -> int:
        """Decoder rows that read one row of the cross cache (and of the encoder mask)."""
        return self.beams if self.shared_cross else 1

    @property
    def rows(self) -> int:
        """Decoder rows: questions x beams."""
        return self.encoder_mask.shape[0] * self.rows_per_cross_row

    def repeat(self, n: int) -> None:
        """Give every question n rows (for beam search), before the first step."""
        self.self_cache = [np.repeat(cache, n, axis=0) for cache in self.self_cache]
        if self.shared_cross:
            self.beams *= n
            return
        self.encoder_mask = np.repeat(self.encoder_mask, n, axis=0)
        self.cross_cache = [np.repeat(cache, n, axis=0) for cache in self.cross_cache]

    def reorder(self, rows: np.ndarray) -> None:
        """Keep the self-attention cache of the given rows (beam search's surviving beams).

        Beams of one question share their cross-attention cache, so it needs no reordering. Only the
        rows that change are copied, in place: the caches are the decoder's own outputs. `rows` names a
        source row for every row (a permutation with repeats); `select` drops rows.
        """
        moved = np.flatnonzero(rows != np.arange(len(rows)))
        if moved.size:
            sources = rows[moved]
            for cache in self.self_cache:
                cache[moved] = cache[sources]

    def subset(self, rows: list[int]) -> DecoderState:
        """A new state of the given rows only (copies); this one is left as it is."""
        state = DecoderState(
            self.encoder_mask, list(self.cross_cache), list(self.self_cache), self.shared_cross, self.beams
        )
        state.select(rows)
        return state

    def select(self, rows: np.ndarray | list[int]) -> None:
        """Keep only the given rows, dropping the caches of the others (finished or cancelled answers).

        Raises:
            ValueError: with beams sharing a cross cache, rows that are not whole questions.
        """
        rows = np.asarray(rows, dtype=np.int64)
        self.self_cache = [cache[rows] for cache in self.self_cache]
        cross_rows = rows
        if self.shared_cross and self.beams > 1:
            cross_rows = rows[:: self.beams] // self.beams
            whole = (cross_rows[:, None] * self.beams + np.arange(self.beams)).reshape(-1)
            if rows.size % self.beams or not np.array_equal(rows, whole):
                raise ValueError(f"rows {rows.tolist()} are not whole questions of {self.beams} beams")
        self.encoder_mask = self.encoder_mask[cross_rows]
        self.cross_cache = [cache[cross_rows] for cache in self.cross_cache]


def check_session_config(config: object) -> None:
    """A `ConfigError` unless `config` is None or a dict of onnxruntime session config entries (str: str)."""
    if config is None:
        return
    if not isinstance(config, dict):
        raise ConfigError(
            f"session_config must be a dict of str to str, got {type(config).__name__}; "
            'e.g. {"session.intra_op.allow_spinning": "0"}'
        )
    for key, value in config.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(
                f"session_config entries must be str: str, got {key!r}: {value!r} ({type(value).__name__}); "
                'give values as strings, e.g. {"session.intra_op.allow_spinning": "0"}'
            )


class T5Graphs:
    """Encoder and decoder sessions; one shared session per graph, safe across threads.

    The encoder graph returns the cross-attention keys/values of every decoder layer; the
    decoder graph runs one step with the cache, the first step with an empty self-attention cache.
    """

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        threads: int | None = None,
        session_config: dict[str, str] | None = None,
    ):
        if threads is not None:
            check_threads(threads)
        check_session_config(session_config)
        _check_runtime_supports(manifest)
        warn_if_saturating(manifest)
        for role in ("decoder", "encoder"):
            check_graph_files(folder, manifest, role)
        self.threads = threads or physical_cores()
        # The encoder runs once per question: its threads must not spin afterwards, or they take
        # cores from the decoder's threads for the whole answer.
        encoder_config = {"session.intra_op.allow_spinning": "0"} | (session_config or {})
        self._shared = _map_shared_tensors(folder, manifest)
        # The larger graph first: each load briefly holds its weights twice (mapped and pre-packed),
        # so the peak is lowest while little else is resident yet.
        self.decoder = self._session(folder, manifest, "decoder", self._options(session_config, "decoder"))
        self.encoder = self._session(folder, manifest, "encoder", self._options(encoder_config, "encoder"))
        self.dims = manifest.dims
        # int4's MatMulNBits kernel computes rows two at a time and a lone last row another way (a
        # float-rounding difference), so an odd batch would answer unlike the same rows in an even one.
        self.even_rows = bool(manifest.quantization and manifest.quantization.is_int4)
        self._bind_io()

    def _options(self, session_config: dict[str, str] | None, role: str) -> ort.SessionOptions:
        options = ort.SessionOptions()
        for names, value in self._shared:
            if role in names:
                options.add_initializer(names[role], value)
        for key, value in (session_config or {}).items():
            options.add_session_config_entry(key, value)
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return options

    @staticmethod
    def _session(folder: Path, manifest: Manifest, role: str, options: ort.SessionOptions) -> ort.InferenceSession:
        path = Path(folder) / manifest.files[role].path
        try:
            # No fallback: it would print a banner to stdout and load the same graph again on the same CPU.
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"], enable_fallback=0)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            if "procfs" in str(e):
                raise ArtifactError(
                    f"onnxruntime cannot open {path.name}'s weights file without /proc; "
                    "mount /proc in the sandbox or chroot (container runtimes do)"
                ) from e
            if _installed() < GRAPHS_MIN_ONNXRUNTIME:
                raise ArtifactError(
                    f"onnxruntime {ort.__version__} cannot load {path.name} ({shown(str(e), 160)}): edgeqa's graphs "
                    f"need onnxruntime {'.'.join(map(str, GRAPHS_MIN_ONNXRUNTIME))} or newer "
                    "(MultiHeadAttention with attention_bias): pip install -U onnxruntime"
                ) from e
            raise ArtifactError(
                f"{path.name} ({role}) is not a loadable ONNX graph: {shown(str(e), 300)}; re-export the artifact"
            ) from e

    def _bind_io(self) -> None:
        layers = self.dims.num_decoder_layers
        self._self_names = [f"past_key_values.{name}" for name in cache_names(layers, "decoder")]
        self._cross_names = [f"past_key_values.{name}" for name in cache_names(layers, "encoder")]
        self._encoder_outputs = [f"present.{name}" for name in cache_names(layers, "encoder")]
        self._decoder_outputs = ["logits"] + [f"present.{name}" for name in cache_names(layers, "decoder")]
        expected = {
            "encoder": ({"input_ids", "attention_mask"}, set(self._encoder_outputs)),
            "decoder": (
                {"input_ids", "encoder_attention_mask", *self._self_names, *self._cross_names},
                set(self._decoder_outputs),
            ),
        }
        self._per_question = {"encoder_attention_mask", *self._cross_names}
        # A graph that reads one cross cache per question says so in its inputs' first dimension
        first = {i.name: (i.shape or [None])[0] for i in self.decoder.get_inputs()}
        self.shared_cross = all(first.get(name) == QUESTIONS_DIM for name in self._per_question)
        for role, session in (("encoder", self.encoder), ("decoder", self.decoder)):
            inputs, outputs = expected[role]
            actual = {i.name for i in session.get_inputs()}
            wrong = sorted((inputs - actual) | (outputs - {o.name for o in session.get_outputs()}))
            wrong += sorted(f"unexpected {name}" for name in actual - inputs)
            if wrong:
                raise ArtifactError(
                    f"the {role} graph does not match a {self.dims.num_decoder_layers}-layer T5 decoder "
                    f"({', '.join(wrong[:3])}{' and more' if len(wrong) > 3 else ''}): the artifact is "
                    "inconsistent or not from this edgeqa; re-export it with `edgeqa export`"
                )

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> DecoderState:
        """Run the encoder; the state holds the cross-attention cache and an empty self-attention cache."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        cross = _run(self.encoder, "encoder", self._encoder_outputs, feed)
        empty = np.zeros((input_ids.shape[0], self.dims.num_heads, 0, self.dims.d_kv), dtype=np.float32)
        return DecoderState(
            encoder_mask=attention_mask,
            cross_cache=cross,
            self_cache=[empty] * len(self._self_names),
            shared_cross=self.shared_cross,
        )

    def step(self, state: DecoderState, tokens: np.ndarray) -> np.ndarray:
        """Run the decoder on one new token per row; returns float32 logits (rows, vocab).

        With `even_rows` (int4), an odd number of rows runs with a copy of the last question beside
        it (its rows and its cross-cache row; an odd count of rows means an odd count of beams), whose
        results are dropped: every row then takes the kernel's two-row path, whatever its batch.
        """
        feed = {
            "input_ids": tokens.reshape(-1, 1).astype(np.int64, copy=False),
            "encoder_attention_mask": state.encoder_mask,
        }
        feed.update(zip(self._self_names, state.self_cache, strict=True))
        feed.update(zip(self._cross_names, state.cross_cache, strict=True))
        paired = self.even_rows and state.rows % 2 == 1
        group = state.rows_per_cross_row
        if paired:
            feed = {
                name: np.concatenate([value, value[-1:] if name in self._per_question else value[-group:]])
                for name, value in feed.items()
            }
        outputs = _run(self.decoder, "decoder", self._decoder_outputs, feed)
        if paired:
            outputs = [output[:-group] for output in outputs]
        logits = outputs[0]
        if logits.ndim != 3 or logits.shape[0] != state.rows or logits.shape[2] != self.dims.vocab_size:
            raise ArtifactError(
                f"the decoder graph returned logits of shape {logits.shape}, not ({state.rows}, 1, "
                f"{self.dims.vocab_size}): the artifact is inconsistent; re-export it with `edgeqa export`"
            )
        state.self_cache = outputs[1:]
        return logits[:, -1, :]


def _run(session: ort.InferenceSession, role: str, outputs: list[str], feed: dict[str, np.ndarray]) -> list:
    """Run a graph; one that loads but fails on the inputs its interface declares is a broken artifact."""
    try:
        # `InferenceSession.run` first checks every feed name against a list of the graph's inputs
        # and every value's type, in Python: 50-70 us a decoder step (50 inputs), 1.5% of a base
        # step. `_bind_io` checked the names once, at load; the session's own `run` is the fallback.
        run = getattr(getattr(session, "_sess", None), "run", None)
        return run(outputs, feed, None) if run is not None else session.run(outputs, feed)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidArgument types
        raise ArtifactError(
            f"onnxruntime cannot run the {role} graph ({shown(str(e), 160)}); unless it ran out of memory, "
            "the artifact is inconsistent: re-export it with `edgeqa export`"
        ) from e

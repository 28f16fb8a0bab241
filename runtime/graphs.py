"""The two ONNX graphs of an artifact (encoder, merged decoder) behind a step-by-step interface."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeqa.errors import ArtifactError
from edgeqa.manifest import Manifest

INT4_MIN_ONNXRUNTIME = (1, 20)
_PAST = re.compile(r"past_key_values\.(\d+)\.(decoder|encoder)\.(key|value)")


def physical_cores() -> int:
    """Physical CPU cores (hyper-threads do not help matrix work), falling back to logical ones."""
    try:
        cores = set()
        physical = "0"
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("physical id"):
                    physical = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    cores.add((physical, line.split(":")[1].strip()))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def _check_runtime_supports(manifest: Manifest) -> None:
    """Refuse an int4 artifact on an onnxruntime without its operators, with the fix."""
    if (manifest.quantization or {}).get("method") != "weight-only-int4":
        return
    installed = tuple(int(part) for part in re.findall(r"\d+", ort.__version__)[:2])
    if installed < INT4_MIN_ONNXRUNTIME:
        raise ArtifactError(
            f"this artifact has int4 weights (MatMulNBits), which need onnxruntime "
            f"{'.'.join(map(str, INT4_MIN_ONNXRUNTIME))} or newer; this is {ort.__version__}: "
            "pip install -U onnxruntime, or use an int8 artifact"
        )


@dataclass
class DecoderState:
    """What one generation carries between decoder steps.

    The cross-attention keys/values are computed on the first step and then only read; the
    self-attention cache grows by one position a step.
    """

    encoder_hidden: np.ndarray
    encoder_mask: np.ndarray
    self_cache: list[np.ndarray] = field(default_factory=list)
    cross_cache: list[np.ndarray] = field(default_factory=list)

    def repeat(self, n: int) -> None:
        """Repeat every row n times (for beam search), before the first step."""
        self.encoder_hidden = np.repeat(self.encoder_hidden, n, axis=0)
        self.encoder_mask = np.repeat(self.encoder_mask, n, axis=0)

    def reorder(self, rows: np.ndarray) -> None:
        """Keep the self-attention cache of the given rows (beam search's surviving beams).

        Beams of one question share their cross-attention cache, so it needs no reordering.
        """
        self.self_cache = [cache[rows] for cache in self.self_cache]


class T5Graphs:
    """Encoder and merged decoder sessions; one shared session per graph, safe across threads."""

    def __init__(
        self,
        folder: Path,
        manifest: Manifest,
        threads: int | None = None,
        session_config: dict[str, str] | None = None,
    ):
        _check_runtime_supports(manifest)
        self.threads = threads or physical_cores()
        # The encoder runs once per question: its threads must not spin afterwards, or they take
        # cores from the decoder's threads for the whole answer.
        encoder_config = {"session.intra_op.allow_spinning": "0"} | (session_config or {})
        # The larger graph first: each load briefly holds its weights twice (mapped and pre-packed),
        # so the peak is lowest while little else is resident yet.
        self.decoder = self._session(folder, manifest, "decoder", self._options(session_config))
        self.encoder = self._session(folder, manifest, "encoder", self._options(encoder_config))
        self.dims = manifest.dims
        self._self_names: list[str] = []
        self._cross_names: list[str] = []
        self._bind_decoder_io()

    def _options(self, session_config: dict[str, str] | None) -> ort.SessionOptions:
        options = ort.SessionOptions()
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
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            if "procfs" in str(e):
                raise ArtifactError(
                    f"onnxruntime cannot open {path.name}'s weights file without /proc; "
                    "mount /proc in the sandbox or chroot (container runtimes do)"
                ) from e
            raise ArtifactError(
                f"{path.name} ({role}) is not a loadable ONNX graph: {e}; re-export the artifact"
            ) from e

    def _bind_decoder_io(self) -> None:
        inputs = {i.name for i in self.decoder.get_inputs()}
        required = {"input_ids", "encoder_hidden_states", "encoder_attention_mask", "use_cache_branch"}
        if not required <= inputs:
            missing = ", ".join(sorted(required - inputs))
            raise ArtifactError(
                f"the decoder graph lacks input(s) {missing}: it is not a merged T5 decoder; "
                "re-export with `edgeqa export`"
            )
        layers: dict[int, dict[str, str]] = {}
        for name in inputs:
            if match := _PAST.fullmatch(name):
                layers.setdefault(int(match[1]), {})[f"{match[2]}.{match[3]}"] = name
        if len(layers) != self.dims.num_decoder_layers:
            raise ArtifactError(
                f"the decoder graph has {len(layers)} cache layers, the manifest says "
                f"{self.dims.num_decoder_layers}; the artifact is inconsistent, re-export it"
            )
        for layer in range(len(layers)):
            self._self_names += [layers[layer]["decoder.key"], layers[layer]["decoder.value"]]
            self._cross_names += [layers[layer]["encoder.key"], layers[layer]["encoder.value"]]
        self._first_outputs = (
            ["logits"]
            + [n.replace("past_key_values", "present") for n in self._self_names]
            + [n.replace("past_key_values", "present") for n in self._cross_names]
        )
        self._next_outputs = self._first_outputs[: 1 + len(self._self_names)]

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> DecoderState:
        (hidden,) = self.encoder.run(["last_hidden_state"], {"input_ids": input_ids, "attention_mask": attention_mask})
        return DecoderState(encoder_hidden=hidden, encoder_mask=attention_mask)

    def step(self, state: DecoderState, tokens: np.ndarray) -> np.ndarray:
        """Run the decoder on one new token per row; returns float32 logits (rows, vocab)."""
        feed = {
            "input_ids": tokens.reshape(-1, 1).astype(np.int64, copy=False),
            "encoder_hidden_states": state.encoder_hidden,
            "encoder_attention_mask": state.encoder_mask,
        }
        first = not state.cross_cache
        if first:
            rows = tokens.shape[0]
            empty = np.zeros((rows, self.dims.num_heads, 0, self.dims.d_kv), dtype=np.float32)
            feed.update({name: empty for name in self._self_names + self._cross_names})
            feed["use_cache_branch"] = np.zeros(1, dtype=bool)
            outputs = self.decoder.run(self._first_outputs, feed)
            n_self = len(self._self_names)
            state.self_cache = outputs[1 : 1 + n_self]
            state.cross_cache = outputs[1 + n_self :]
        else:
            feed.update(zip(self._self_names, state.self_cache, strict=True))
            feed.update(zip(self._cross_names, state.cross_cache, strict=True))
            feed["use_cache_branch"] = np.ones(1, dtype=bool)
            outputs = self.decoder.run(self._next_outputs, feed)
            state.self_cache = outputs[1:]
        return outputs[0][:, -1, :]

"""How an artifact's graphs are written: each graph's weights beside it in GRAPH.data, and the
embedding table both graphs use once, in embedding.data.

onnxruntime maps external weight files instead of parsing a copy out of the graph (lower peak
memory, faster load) and reads the embedding a row at a time from the mapping. Rows touched
stay resident, and over many questions that is the whole table: stored once and handed to both
sessions as one tensor, it is resident once.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx.external_data_helper import convert_model_to_external_data, set_external_data

from edgeqa.manifest import FileEntry, SharedTensor, file_entry

# The encoder graph also returns each decoder layer's cross-attention keys/values; the decoder
# graph runs one step with the cache, the first step included (see `export.graphs`).
GRAPHS = {"encoder": "encoder.onnx", "decoder": "decoder.onnx"}
WEIGHTS_SUFFIX = ".data"
EMBEDDING_FILE = "embedding.data"
EMBEDDING_ROLE = "embedding"
_GATHERS = ("Gather", "GatherBlockQuantized")


def weights_file(graph_name: str) -> str:
    """The file beside a graph that holds its weights."""
    return graph_name + WEIGHTS_SUFFIX


def graph_entries(folder: Path) -> dict[str, FileEntry]:
    """Manifest entries of the graphs, their weights files and the shared embedding, as written."""
    entries = {role: file_entry(folder, name) for role, name in GRAPHS.items()}
    for role, name in GRAPHS.items():
        if (folder / weights_file(name)).exists():
            entries[f"{role}_weights"] = file_entry(folder, weights_file(name))
    if (folder / EMBEDDING_FILE).exists():
        entries[EMBEDDING_ROLE] = file_entry(folder, EMBEDDING_FILE)
    return entries


def save_graph(source: Path, target: Path) -> None:
    """Save one graph as TARGET with all its weights in TARGET.data."""
    save_graphs({"graph": source}, {"graph": target})


def save_graphs(sources: dict[str, Path], targets: dict[str, Path]) -> list[SharedTensor]:
    """Save each role's graph as its target with its weights beside it, the shared embedding once.

    Args:
        sources: Graph files by role (encoder, decoder).
        targets: Where each role's graph goes, all in one folder.

    Returns:
        The tensors stored once for both graphs: none if the graphs' embeddings differ or are
        int4 (packed two to a byte, which the runtime cannot hand to onnxruntime as one tensor).
    """
    models = {role: onnx.load(str(path)) for role, path in sources.items()}
    embeddings = {role: _embedding(model) for role, model in models.items()}
    found = [tensor for tensor in embeddings.values() if tensor is not None]
    shared = (
        1 < len(found) == len(embeddings)
        and _byte_addressable(found[0])
        and all(_same(found[0], tensor) for tensor in found[1:])
    )
    written: onnx.TensorProto | None = None
    for role, model in models.items():
        target = targets[role]
        convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=weights_file(target.name), size_threshold=1024
        )
        embedding = embeddings[role]
        if shared and embedding is not None:
            if written is None:
                set_external_data(embedding, location=EMBEDDING_FILE)
                written = embedding
            else:  # already in the file: point at it instead of writing it again
                embedding.ClearField("raw_data")
                del embedding.external_data[:]
                embedding.external_data.extend(written.external_data)
        onnx.save_model(model, str(target))
        weights = target.with_name(weights_file(target.name))
        if weights.exists():
            weights.chmod(0o644)  # onnx writes 0600: hidden from other users
    if not shared or written is None:
        return []
    (targets[next(iter(targets))].parent / EMBEDDING_FILE).chmod(0o644)
    return [
        SharedTensor(
            role=EMBEDDING_ROLE,
            dtype=onnx.helper.tensor_dtype_to_np_dtype(written.data_type).name,
            shape=list(written.dims),
            names={role: tensor.name for role, tensor in embeddings.items() if tensor is not None},
        )
    ]


def _embedding(model: onnx.ModelProto) -> onnx.TensorProto | None:
    """The graph's embedding table: the largest initializer read by a Gather."""
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    gathered = [
        initializers[node.input[0]]
        for node in model.graph.node
        if node.op_type in _GATHERS and node.input[0] in initializers and len(initializers[node.input[0]].dims) == 2
    ]
    return max(gathered, key=lambda t: t.dims[0] * t.dims[1], default=None)


def _same(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    return a.data_type == b.data_type and list(a.dims) == list(b.dims) and a.raw_data == b.raw_data


def _byte_addressable(tensor: onnx.TensorProto) -> bool:
    """Whether the raw data is whole numpy elements (not int4 packed two to a byte), as the runtime maps it."""
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return len(tensor.raw_data) == itemsize * tensor.dims[0] * tensor.dims[1]

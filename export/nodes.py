"""Which PyTorch module each node of edgeqa's graphs comes from, by the node names the exporter writes.

The decoder graph names nodes after the module path (`/decoder/block.0/layer.2/DenseReluDense/wo/MatMul`);
the encoder graph leaves out `encoder` (`/block.0/layer.0/SelfAttention/q/MatMul`) and names the
appended cross-attention projections `cross_kv//projections.J/MatMul` (layer J // 2, k then v).
"""

from __future__ import annotations

import re

#: The prefix `export.graphs` gives the appended cross-attention graph's names.
CROSS_PREFIX = "cross_kv/"
_PROJECTION = re.compile(re.escape(CROSS_PREFIX) + r"/projections\.(\d+)/")


def module_path(module: str) -> str:
    """`decoder.block.0.layer.2.DenseReluDense.wo` -> `decoder/block.0/layer.2/DenseReluDense/wo`."""
    out: list[str] = []
    for part in module.split("."):
        if part.isdigit() and out:
            out[-1] += f".{part}"
        else:
            out.append(part)
    return "/".join(out)


#: The embedding's names: the module `shared`, which the encoder and decoder reach as `embed_tokens`.
EMBEDDING_NAMES = ("shared", "embed_tokens")


def node_module(role: str, node: str) -> str | None:
    """The module path (as `module_path` writes it) a node of the `role` graph computes, or None."""
    found = _PROJECTION.match(node)
    if found:
        index = int(found.group(1))
        return f"decoder/block.{index // 2}/layer.1/EncDecAttention/{'kv'[index % 2]}"
    parts = node.strip("/").split("/")[:-1]  # the last part names the op (MatMul, Gather_2)
    if not parts:
        return None
    if parts[-1] in EMBEDDING_NAMES:
        return "shared"
    if role == "encoder" and parts[0].startswith("block."):
        parts.insert(0, "encoder")
    return "/".join(parts)

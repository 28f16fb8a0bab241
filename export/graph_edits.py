"""Small edits of an ONNX graph that the export's passes share: replacing nodes in place, dropping
what nothing reads."""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper
from onnx.external_data_helper import uses_external_data


def attribute(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of a node's attribute, or `default` where the node does not set it."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether a node of the graph holds a subgraph (If, Loop), which may read the graph's names."""
    return any(attribute.type == onnx.AttributeProto.GRAPH for node in graph.node for attribute in node.attribute)


def splice(graph: onnx.GraphProto, replacements: dict[int, list[onnx.NodeProto]], removed: set[int]) -> None:
    """Put each `replacements[id(node)]` where that node is, and leave out the nodes in `removed` (ids)."""
    nodes = []
    for node in graph.node:
        nodes += replacements.get(id(node), [])
        if id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def drop_unused(graph: onnx.GraphProto) -> int:
    """Remove the nodes whose outputs nothing reads, and the inline constants only they read; returns
    how many nodes."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(output in needed for output in node.output):
            kept.append(node)
            needed.update(node.input)
    dropped = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    remove_initializers(
        graph, {t.name for t in graph.initializer if t.name not in needed and not uses_external_data(t)}
    )
    return dropped


def remove_initializers(graph: onnx.GraphProto, names: set[str]) -> None:
    """Delete the named initializers in place, by index: `remove()` compares whole tensors, and
    rebuilding the list copies every one (a checkpoint's weights, once per call)."""
    for index in reversed(range(len(graph.initializer))):
        if graph.initializer[index].name in names:
            del graph.initializer[index]

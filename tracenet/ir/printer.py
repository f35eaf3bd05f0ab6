"""The IR's text form (stable across runs, for reading and snapshot tests) and Graphviz export."""
import os

import numpy as np

from .._sym import Sym, SymFloat


def format_attr(value):
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(format_attr(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    if hasattr(value, "short"):  # a dtype
        return value.short
    if isinstance(value, (Sym, SymFloat)):
        return value.display()
    return str(value)


def format_spec(spec):
    """An indexing key as Python would write it: [:, 1:3, None]."""
    parts = []
    for item in spec:
        if item is None:
            parts.append("None")
        elif item is Ellipsis:
            parts.append("...")
        elif isinstance(item, tuple) and item[0] == "s":
            start, stop, step = ("" if v is None else str(v) for v in item[1:])
            parts.append(f"{start}:{stop}" + (f":{step}" if step else ""))
        elif isinstance(item, tuple):
            parts.append(f"idx{item[1]}")
        else:
            parts.append(str(item))
    return "[" + ", ".join(parts) + "]"


def format_constant(array):
    if array.size == 1:
        v = array.reshape(()).item()
        return repr(v) if not isinstance(v, bool) else str(v)
    return f"<{array.size} values>"


def format_attrs(node):
    out = []
    for k, v in node.attrs.items():
        if (node.op == "constant" and k == "value") or k == "body":
            continue  # a scan's body is printed below its node
        if k == "spec":
            out.append(f"key={format_spec(v)}")
        elif v is None:
            continue
        else:
            out.append(f"{k}={format_attr(v)}")
    return " ".join(out)


def format_loc(loc):
    return f"{os.path.basename(loc[0])}:{loc[1]}" if loc else ""


def node_line(node, indent):
    outs = ", ".join(f"{v.ref}: {v.type_str()}" for v in node.outputs)
    if node.op == "constant":
        rhs = f"constant {format_constant(node.attrs['value'])}"
    else:
        name = node.op if node.op != "fused" else f"fused[{node.attrs.get('kind', '')}]"
        rhs = f"{name}({', '.join(v.ref for v in node.inputs)})"
        attrs = format_attrs(node) if node.op != "fused" else ""
        if attrs:
            rhs += "  " + attrs
    line = f"{indent}{outs} = {rhs}"
    loc = format_loc(node.loc)
    if loc:
        line += f"  # {loc}"
    return line


def format_graph(graph, indent=""):
    params = ", ".join(f"{v.ref}: {v.type_str()}" for v in graph.inputs)
    lines = []
    if graph.key is not None and not indent:
        lines.append(f"# specialised for {graph.key}")
    symbolic = {}
    for v in graph.inputs if not indent else ():  # (a loop body's sizes are its node's)
        for d, size in enumerate(v.shape):
            if isinstance(size, Sym):
                for name in size.symbols():
                    symbolic.setdefault(name, []).append(f"{v.ref} dim {d}")
    for name, where in symbolic.items():
        lines.append(f"# symbolic size {name} (known when the code runs): {', '.join(where)}")
    head = f"graph {graph.name}" if not indent else "body"  # a loop body is nameless
    lines.append(f"{indent}{head}({params}) {{")
    inner = indent + "  "
    for node in graph.nodes:
        if node.op == "fused":
            lines.append(node_line(node, inner) + " {")
            for m in node.members:
                lines.append(node_line(m, inner + "    "))
                if "body" in m.attrs:  # a loop fused with its neighbours: its body too
                    lines.append(format_graph(m.attrs["body"], inner + "        "))
            lines.append(inner + "}")
        else:
            lines.append(node_line(node, inner))
            if "body" in node.attrs:  # a loop: its body once, indented under it
                lines.append(format_graph(node.attrs["body"], inner + "    "))
    lines.append(f"{inner}return {', '.join(v.ref for v in graph.outputs)}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _dot_escape(s):
    return s.replace("\\", "\\\\").replace('"', '\\"')


def to_dot(graph):
    lines = [f'digraph "{_dot_escape(graph.name)}" {{', "  rankdir=TB;",
             '  node [shape=box, fontname="monospace"];']
    for v in graph.inputs:
        lines.append(f'  v{v.id} [label="{_dot_escape(v.ref)}\\n{v.type_str()}", '
                     'shape=ellipse];')
    for i, node in enumerate(graph.nodes):
        label = node.op if node.op != "fused" else f"fused[{node.attrs.get('kind', '')}]"
        if node.op == "constant":
            label = f"constant {format_constant(node.attrs['value'])}"
        outs = ", ".join(f"{v.ref}: {v.type_str()}" for v in node.outputs)
        lines.append(f'  n{i} [label="{_dot_escape(label)}\\n{_dot_escape(outs)}"];')
        for v in node.inputs:
            src = _dot_source(graph, v)
            lines.append(f"  {src} -> n{i};")
    for v in graph.outputs:
        lines.append(f'  out{v.id} [label="return {_dot_escape(v.ref)}", shape=ellipse];')
        lines.append(f"  {_dot_source(graph, v)} -> out{v.id};")
    lines.append("}")
    return "\n".join(lines)


def _dot_source(graph, v):
    for i, node in enumerate(graph.nodes):
        if any(o is v for o in node.outputs):
            return f"n{i}"
    return f"v{v.id}"

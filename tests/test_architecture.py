"""The package's import structure: no import cycles, and every function-local import says why.

The import graph is read from the source with ``ast``: every ``import`` statement in every
module under ``tracenet/``, at module level or inside a function, counts. An import names one
module (``from .ops import shape`` names ``tracenet.ops.shape``; ``from .ops.registry import
Meta`` names ``tracenet.ops.registry``; ``from .ops import REGISTRY`` names the package
``tracenet.ops``); the parent packages Python initialises on the way are not edges.
"""
import ast
import os
import re
import sys

# the source tree next to these tests (not whichever tracenet is installed)
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "tracenet")

# [project] dependencies in pyproject.toml: always installed, so importing them locally needs no
# reason; any other third-party import inside a function is an optional dependency
REQUIRED_DEPENDENCIES = {"numpy", "cffi", "jinja2"}
STDLIB = getattr(sys, "stdlib_module_names", None)  # Python 3.10+


def _modules():
    """{dotted module name: (path, is_package)} for every .py file of the package."""
    base = os.path.dirname(PACKAGE_DIR)
    out = {}
    for d, _, files in os.walk(PACKAGE_DIR):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                name = os.path.relpath(path, base)[:-3].replace(os.sep, ".")
                is_pkg = name.endswith(".__init__")
                out[name[:-len(".__init__")] if is_pkg else name] = (path, is_pkg)
    return out


class Import:
    """One imported module: who imports it, where, and whether it is inside a function."""

    def __init__(self, module, path, lineno, target, local, has_reason):
        self.module, self.path, self.lineno = module, path, lineno
        self.target, self.local, self.has_reason = target, local, has_reason

    def __str__(self):
        return f"{os.path.relpath(self.path, os.path.dirname(PACKAGE_DIR))}:{self.lineno}: " \
               f"{self.module} -> {self.target}"


def _comment(line):
    """The comment text of a source line, without linter directives (``noqa``...)."""
    if "#" not in line:
        return ""
    text = line.split("#", 1)[1]
    return re.sub(r"^\s*(noqa(:\s*[A-Z0-9, ]+)?|type:\s*ignore\S*)", "", text).strip()


def _has_reason(lines, node):
    """A comment on one of the statement's lines or on the line just above it."""
    first = node.lineno - 1
    last = getattr(node, "end_lineno", node.lineno) - 1
    if first > 0 and lines[first - 1].strip().startswith("#") and _comment(lines[first - 1]):
        return True
    return any(_comment(lines[i]) for i in range(first, last + 1))


def _targets(node, module, is_pkg, mods):
    """The modules an import statement names (tracenet modules by dotted name, other
    top-level packages by their first component)."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            name = alias.name
            if name.split(".")[0] != "tracenet":
                yield name.split(".")[0]
                continue
            while name not in mods:
                name = name.rpartition(".")[0]
            yield name
        return
    if node.level:
        parts = (module if is_pkg else module.rpartition(".")[0]).split(".")
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module
    if base.split(".")[0] != "tracenet":
        yield base.split(".")[0]
        return
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield sub if sub in mods else base


def imports():
    """Every import statement target in the package, as ``Import`` records."""
    mods = _modules()
    out = []
    for module, (path, is_pkg) in sorted(mods.items()):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        lines = source.splitlines()

        def walk(node, local):
            for child in ast.iter_child_nodes(node):
                inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                    ast.Lambda))
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(child, module, is_pkg, mods):
                        out.append(Import(module, path, child.lineno, target, local,
                                          _has_reason(lines, child)))
                walk(child, inner)

        walk(ast.parse(source, path), False)
    return mods, out


def import_graph():
    """{module: set of tracenet modules it imports} (self-imports dropped)."""
    mods, found = imports()
    graph = {m: set() for m in mods}
    for imp in found:
        if imp.target in mods and imp.target != imp.module:
            graph[imp.module].add(imp.target)
    return graph


def strongly_connected_components(graph):
    """Tarjan's algorithm, iterative; only components of more than one module."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return sorted(out)


def _describe(component, graph):
    lines = [f"cycle of {len(component)} modules:"]
    for m in component:
        inside = sorted(t for t in graph[m] if t in component)
        lines.append(f"    {m} -> {', '.join(inside)}")
    return "\n".join(lines)


def test_no_import_cycles():
    graph = import_graph()
    cycles = strongly_connected_components(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, graph) for c in cycles)


def _needs_reason(imp, mods):
    if imp.target in mods:
        return True
    if STDLIB is None:  # cannot tell optional dependencies from the standard library
        return False
    return imp.target not in STDLIB and imp.target not in REQUIRED_DEPENDENCIES


def test_function_local_imports_say_why():
    mods, found = imports()
    silent = sorted({str(i) for i in found
                     if i.local and _needs_reason(i, mods) and not i.has_reason})
    assert not silent, ("function-local imports of tracenet modules or optional dependencies "
                        "need a comment (same line or the line above) saying why they are "
                        "local:\n    " + "\n    ".join(silent))


# the layers, bottom up: a module imports only from its own layer and the ones below it
LAYERS = [
    ("dtypes and value types", ["tracenet._dtype", "tracenet._aligned", "tracenet._meta", "tracenet._sym",
                                "tracenet._grad_mode", "tracenet._random", "tracenet._trace_errors", "tracenet.size",
                                "tracenet.utils", "tracenet.cuda", "tracenet.backends"]),
    ("Tensor and the op registry", ["tracenet.tensor", "tracenet._tensor_methods",
                                    "tracenet._view_writes",
                                    "tracenet._tensor_str", "tracenet.ops",
                                    "tracenet._legacy_types"]),
    ("autograd engine", ["tracenet.autograd"]),
    ("nn and optim", ["tracenet.nn", "tracenet.optim", "tracenet.serialization",
                      "tracenet.utils.data", "tracenet.distributed"]),
    ("trace, IR and passes", ["tracenet.trace", "tracenet._saved_versions",
                              "tracenet._name_guards", "tracenet.ir", "tracenet.passes"]),
    ("codegen", ["tracenet.codegen"]),
    ("runtime", ["tracenet.runtime"]),
    ("compile drivers", ["tracenet.executable", "tracenet.step_state", "tracenet.warm",
                         "tracenet.compiler", "tracenet.step", "tracenet.compiled_function",
                         "tracenet.compiled_pair", "tracenet.fused_optim"]),
    ("the public package", ["tracenet", "tracenet.cli", "tracenet.__main__"]),
]


def layer_of(module):
    """Index in LAYERS of the longest prefix naming ``module``."""
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and \
                    (best is None or len(p) > best[1]):
                best = (i, len(p))
    return None if best is None else best[0]


def test_every_module_has_a_layer_and_imports_downwards():
    mods, found = imports()
    assert not [m for m in mods if layer_of(m) is None]
    upward = sorted(f"{imp} ({LAYERS[layer_of(imp.module)][0]} -> "
                    f"{LAYERS[layer_of(imp.target)][0]})"
                    for imp in found
                    if imp.target in mods and layer_of(imp.target) > layer_of(imp.module))
    assert not upward, "imports from a lower layer into a higher one:\n    " + \
        "\n    ".join(upward)


if __name__ == "__main__":
    # python tests/test_architecture.py: print the cycles and the local imports
    g = import_graph()
    for comp in strongly_connected_components(g):
        print(_describe(comp, g))
    ms, found = imports()
    for imp in found:
        if imp.local and _needs_reason(imp, ms):
            print(("  " if imp.has_reason else "! ") + str(imp))

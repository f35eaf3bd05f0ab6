"""The op registry: every primitive is defined once, here.

An ``Op`` bundles, for one primitive:

* ``infer(*metas, **attrs)``  -> ``Meta`` (or a tuple of them for multi-output ops): static shape
  and dtype, raising torch-like errors for bad input. Used by eager mode, the tracer and the IR
  verifier alike.
* ``eager(*arrays, **attrs)`` -> ndarray (or tuple): the vectorised numpy implementation, also
  used by the IR interpreter.
* ``backward(ctx, *grads)``   -> one gradient (or None) per input, written with tracenet ops so the
  same rule runs on eager tensors and on traced IR values.
* ``eager_backward(ctx, *grad_arrays)`` -> one ndarray (or None) per input, or None to use
  ``backward``: optional, the same rule in numpy for eager autograd when no graph of the
  backward is recorded (no ``create_graph``), so common nodes do not dispatch an op per term.
* ``saves``: which inputs (indices) and whether the outputs the backward rule reads; only these
  are kept alive (and version-checked) by eager autograd.
* ``grad_fn``: PyTorch's backward-node class name (a string, or a function of ctx).
* ``kind``: what the compiler may assume about the op (``KINDS``): ``"elementwise"`` (pointwise
  with broadcasting, computed by ``c_expr``: fusable into elementwise kernels and GEMM
  epilogues), ``"view"`` (reinterprets input 0's data: the backward recomputes it instead of
  saving it), ``"reduction"`` or ``"opaque"``.
* ``c_expr(args, attrs, ctype)`` -> C expression of one element, for elementwise ops: ``args``
  are the C expressions of the inputs, ``ctype`` the C type of the result.
* ``decomposition(*tensors, **attrs)``: the op written with other ops. The compiler uses it
  when the op has no C lowering of its own (``tracenet/codegen`` registers the lowerings).
* ``eager_only``: why the op can never be compiled (e.g. a data-dependent output shape).
* ``cache_infer``: eager mode may remember ``infer``'s results by input metas and attributes
  (for costly shape rules that read nothing else and have no side effects).

Every pass asks these records; none keeps a list of op names of its own.

``apply(op, *tensors, **attrs)`` is the single entry point that runs an op: on traced values it
records an IR node, otherwise it runs the numpy implementation and records the autograd node.
"""
import numpy as np

from .._meta import Meta  # noqa: F401  (re-exported: older importers use this name)

try:  # numpy >= 2 keeps its error state in a context variable
    from numpy._core._ufunc_config import _extobj_contextvar, _make_extobj
    _IGNORE_ALL = _make_extobj(all="ignore")
except ImportError:  # pragma: no cover (older numpy)
    _extobj_contextvar = None


def _quiet(fn):
    """``fn`` run without numpy's floating-point warnings: like torch, overflow, division by
    zero and invalid values silently give inf/nan."""
    if _extobj_contextvar is not None:
        enter, leave = _extobj_contextvar.set, _extobj_contextvar.reset

        def kernel(*args, **kwargs):
            # what np.errstate(all="ignore") does, without building its state on every call
            token = enter(_IGNORE_ALL)
            try:
                return fn(*args, **kwargs)
            finally:
                leave(token)
    else:
        def kernel(*args, **kwargs):
            with np.errstate(all="ignore"):
                return fn(*args, **kwargs)
    kernel.__name__ = getattr(fn, "__name__", "kernel")
    kernel.__wrapped__ = fn
    return kernel


REGISTRY = {}
KINDS = ("elementwise", "view", "reduction", "opaque")


class Op:
    __slots__ = ("name", "infer", "eager", "backward", "saves_inputs", "saves_outputs",
                 "grad_fn", "num_outputs", "differentiable", "is_view", "kind", "c_expr",
                 "decomposition", "eager_only", "nondiff", "doc", "node_cls", "edge_plans",
                 "eager_backward", "infer_cache")

    def __init__(self, name, infer, eager, backward=None, saves=(), save_outputs=False,
                 grad_fn=None, num_outputs=1, differentiable=True, is_view=False, kind=None,
                 c_expr=None, decomposition=None, eager_only=None, nondiff=(), doc="",
                 eager_backward=None, cache_infer=False):
        self.name = name
        self.infer = infer
        self.eager = eager
        self.backward = backward
        # input indices the backward reads; a trailing ``...`` means "and every later input"
        # (the index tensors of an indexing op)
        self.saves_inputs = tuple(saves)
        self.saves_outputs = save_outputs
        self.grad_fn = grad_fn
        self.num_outputs = num_outputs
        # ops whose outputs carry no gradient (comparisons, argmax, integer results)
        self.differentiable = differentiable
        if kind is None:
            kind = "elementwise" if c_expr is not None else "opaque"
        if kind not in KINDS:
            raise ValueError(f"op {name!r}: kind must be one of {KINDS}, got {kind!r}")
        if (kind == "elementwise" and c_expr is None) or \
                (c_expr is not None and kind not in ("elementwise", "view")):
            raise ValueError(f"op {name!r}: an elementwise op (or a broadcasting view) is "
                             "defined by its C expression")
        self.kind = kind
        self.c_expr = c_expr
        self.decomposition = decomposition
        self.eager_only = eager_only
        # eager result aliases input 0's memory (numpy view): shares its version counter.
        # Every IR view is one; some eager views (basic indexing, split) are copies in the IR.
        self.is_view = is_view or kind == "view"
        # inputs never differentiated (a mask, a class weight): no autograd edge, as in torch
        self.nondiff = tuple(nondiff)
        self.doc = doc
        # eager autograd's caches: the backward-node class when its name is fixed (set by
        # tracenet.autograd.engine), and per input-dtype pattern which inputs get edges
        self.node_cls = None
        self.edge_plans = {}
        # run without numpy's floating-point warnings, as the rule's ops would be
        self.eager_backward = None if eager_backward is None else _quiet(eager_backward)
        # eager mode remembers the shape rule's results per input metas and attributes: for
        # rules that cost more than looking them up (a convolution's, a pooling's), which
        # must then depend on nothing else and have no side effects (errors are not kept)
        self.infer_cache = {} if cache_infer else None

    def grad_fn_name(self, ctx):
        g = self.grad_fn
        if g is None:
            return "".join(p.capitalize() for p in self.name.split("_")) + "Backward0"
        return g if isinstance(g, str) else g(ctx)

    @property
    def elementwise(self):
        return self.kind == "elementwise"

    def __repr__(self):
        return f"<Op {self.name}>"


def op_kind(name):
    """The kind of op ``name`` (``"opaque"`` for names that are not registry ops, such as
    fused groups)."""
    op = REGISTRY.get(name)
    return op.kind if op is not None else "opaque"


def register(name, *, infer, eager, **facts):
    """Define op ``name``; ``facts`` are the keyword arguments of ``Op``."""
    if name in REGISTRY:
        raise ValueError(f"op {name!r} is registered twice")
    op = Op(name, infer, eager, **facts)
    REGISTRY[name] = op
    return op


def defop(name, **kw):
    """Decorator form: the decorated function is the shape rule; eager/backward are keywords."""
    def wrap(infer):
        return register(name, infer=infer, **kw)
    return wrap


class Ctx:
    """What a backward rule sees: the saved inputs/outputs (tensors or IR values), metadata of
    every input, the attributes, and which inputs need a gradient."""
    __slots__ = ("inputs", "outputs", "metas", "out_metas", "attrs", "needs_input_grad")

    def __init__(self, inputs, outputs, metas, out_metas, attrs, needs_input_grad):
        self.inputs = inputs
        self.outputs = outputs
        self.metas = metas
        self.out_metas = out_metas
        self.attrs = attrs
        self.needs_input_grad = needs_input_grad

    @property
    def output(self):
        return self.outputs[0]


def saved_input_indices(op, n_inputs):
    """The indices of an op's inputs its backward reads, for an application with
    ``n_inputs`` inputs (optional inputs that were not given are skipped)."""
    out, after = [], 0
    for i in op.saves_inputs:
        if i is Ellipsis:
            out.extend(range(after, n_inputs))
        else:
            after = i + 1
            if i < n_inputs:
                out.append(i)
    return out


def op_attrs(attrs):
    """The attributes an op's rules see: names starting with ``_`` only label the autograd node
    (``_name``, ``_full``) and are dropped."""
    for k in attrs:
        if k[0] == "_":
            return {k: v for k, v in attrs.items() if k[0] != "_"}
    return attrs


# set by tracenet.trace while a trace is active: a callable (op, inputs, attrs) -> outputs
_tracer = [None]

# the eager interpreter, (op, inputs, attrs) -> outputs: tracenet.autograd.engine installs its
# run_eager here when imported (tracenet/__init__ imports it; ops never import autograd)
_eager = [None]


def apply(op, *inputs, **attrs):
    """Run ``op`` on tensors: record an IR node under tracing (when an input is traced, or
    a concrete tensor from before the trace, which the tracer captures), else compute
    eagerly."""
    tracer = _tracer[0]
    if tracer is not None and (any(t._ir is not None for t in inputs) or
                               tracer.__self__.captures_any(inputs)):
        return tracer(op, inputs, attrs)
    return _eager[0](op, inputs, attrs)

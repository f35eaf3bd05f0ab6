"""The IR: plain data. A ``Graph`` holds named input ``Value``s, ``Node``s in topological SSA
order, and output values. Every value has a static shape and dtype.

A node's ``op`` names a registry op (its attributes are that op's keyword arguments), or is one
of two structural ops: ``constant`` (``attrs["value"]`` holds a numpy array) and ``fused``
(``members`` holds the nodes it groups; the fused node's outputs are the member values used
outside the group). A ``scan`` node holds its loop body, a Graph of its own, in
``attrs["body"]`` (see ``tracenet.ops.scan``); copying a graph copies the bodies too.
"""
from .. import _dtype
from .._meta import Meta
from .._sym import display
from . import printer
from .interpret import interpret


class Value:
    """An SSA value. Identity is the object itself; ``id`` is only its printed number."""
    __slots__ = ("id", "shape", "dtype", "producer", "name", "requires_grad")

    def __init__(self, id, shape, dtype, producer=None, name=None, requires_grad=False):
        self.id = id
        self.shape = tuple(shape)
        self.dtype = dtype
        self.producer = producer  # the Node that defines it; None for graph inputs
        self.name = name          # graph inputs are named (x, conv1.weight)
        self.requires_grad = requires_grad

    @property
    def ref(self):
        return f"%{self.name}" if self.name is not None else f"%{self.id}"

    def type_str(self):
        return f"{self.dtype.short}[{','.join(display(s) for s in self.shape)}]"

    def __repr__(self):
        return f"<Value {self.ref}: {self.type_str()}>"


class Node:
    __slots__ = ("op", "inputs", "attrs", "outputs", "loc", "members")

    def __init__(self, op, inputs, attrs, loc=None, members=None):
        self.op = op
        self.inputs = list(inputs)
        self.attrs = dict(attrs)
        self.outputs = []
        self.loc = loc          # (filename, lineno) of the user code that created it
        self.members = members  # fused nodes: the grouped nodes, in order

    @property
    def output(self):
        return self.outputs[0]

    def __repr__(self):
        return f"<Node {self.op} -> {', '.join(v.ref for v in self.outputs)}>"


class Graph:
    def __init__(self, name="graph"):
        self.name = name
        self.inputs = []
        self.nodes = []
        self.outputs = []
        self.key = None       # the specialisation: input shapes/dtypes and the training flag
        # (state input index, output index) for buffers the traced code updates in place
        self.state_updates = []
        # (input index, output index, number of writes) for inputs the traced code changes in
        # place (``trace._record_input_updates``)
        self.input_updates = []
        # int64 scalar inputs that take a fresh random value on every run (random ops' seeds)
        self.seed_inputs = []
        # how the traced function's outputs nest (trace.structure_of); None: a flat list
        self.output_structure = None
        # (size, forbidden value, exception type, message, shape): checked before each call
        # of the compiled code (see ops/size_value.require_size)
        self.size_checks = []
        self._next_id = 0

    # --- construction ---------------------------------------------------------------------
    def new_value(self, shape, dtype, producer=None, name=None, requires_grad=False):
        self._next_id += 1
        return Value(self._next_id - 1, shape, dtype, producer, name, requires_grad)

    def add_input(self, name, shape, dtype, requires_grad=False):
        v = self.new_value(shape, dtype, None, name, requires_grad)
        self.inputs.append(v)
        return v

    def add_node(self, op, inputs, attrs, out_metas, loc=None, requires_grad=False,
                 members=None):
        node = Node(op, inputs, attrs, loc, members)
        for m in out_metas:
            node.outputs.append(self.new_value(m.shape, m.dtype, node,
                                               requires_grad=requires_grad))
        self.nodes.append(node)
        return node

    def inline(self, other, input_values, mapping=None):
        """Append copies of ``other``'s nodes, reading ``input_values`` (one per input of
        ``other``); returns the values corresponding to ``other.outputs``. ``mapping``, if
        given, is filled with every value of ``other`` -> its copy."""
        mapping = {} if mapping is None else mapping
        mapping.update(zip(other.inputs, input_values))

        def clone(node):
            c = Node(node.op, [mapping[v] for v in node.inputs], _copied_attrs(node.attrs),
                     node.loc, None)
            if node.members is not None:
                c.members = [clone(m) for m in node.members]
            for v in node.outputs:
                if v not in mapping:
                    mapping[v] = self.new_value(v.shape, v.dtype, c,
                                                requires_grad=v.requires_grad)
                c.outputs.append(mapping[v])
            for v in c.outputs:
                v.producer = c
            return c

        for node in other.nodes:
            self.nodes.append(clone(node))
        return [mapping[v] for v in other.outputs]

    def add_constant(self, array):
        dt = _dtype.from_numpy_dtype(array.dtype)
        return self.add_node("constant", [], {"value": array},
                             [Meta(array.shape, dt)]).output

    # --- queries ------------------------------------------------------------------------
    def users(self):
        """Value -> list of nodes that read it (graph outputs are not counted)."""
        out = {}
        for node in self.nodes:
            for v in node.inputs:
                out.setdefault(v, []).append(node)
        return out

    def renumber(self):
        """Give values consecutive ids in definition order (after passes removed nodes); the
        internal values of fused nodes are numbered after all top-level ones."""
        n = 0
        for node in self.nodes:
            for v in node.outputs:
                v.id, n = n, n + 1
        for node in self.nodes:
            exported = set(node.outputs)
            for m in node.members or ():
                for v in m.outputs:
                    if v not in exported:
                        v.id, n = n, n + 1
        self._next_id = n
        return self

    def bodies(self):
        """The subgraphs held by this graph's nodes (scan bodies), outermost first."""
        return [n.attrs["body"] for n in self.nodes if "body" in n.attrs]

    def run(self, *inputs):
        """Run the graph with the IR interpreter; one numpy array per output."""
        return interpret(self, *inputs)

    def op_counts(self):
        counts = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return counts

    def __str__(self):
        return printer.format_graph(self)

    def __repr__(self):
        return f"<Graph {self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes>"

    def to_dot(self):
        return printer.to_dot(self)

    def copy(self, mapping=None):
        """A structural copy (new Node/Value objects, shared constant arrays). ``mapping``, if
        given, is filled with old Value -> new Value."""
        mapping = {} if mapping is None else mapping
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)

        def val(v, producer=None):
            if v not in mapping:
                mapping[v] = Value(v.id, v.shape, v.dtype, producer, v.name, v.requires_grad)
            return mapping[v]

        def copy_node(node):
            c = Node(node.op, [mapping[v] for v in node.inputs], _copied_attrs(node.attrs),
                     node.loc, None)
            if node.members is not None:
                c.members = [copy_node(m) for m in node.members]
            c.outputs = [val(v, c) for v in node.outputs]
            for v in c.outputs:
                v.producer = c
            return c

        new.inputs = [val(v) for v in self.inputs]
        new.seed_inputs = [mapping[v] for v in self.seed_inputs]
        new.size_checks = list(self.size_checks)
        new.nodes = [copy_node(n) for n in self.nodes]
        new.outputs = [mapping[v] for v in self.outputs]
        return new


def _copied_attrs(attrs):
    """A node's attributes for a copy of the node: a body graph is copied, not shared, so
    passes that rewrite one copy's body leave the other alone."""
    if "body" in attrs:
        attrs = dict(attrs, body=attrs["body"].copy())
    return attrs

"""Fusion: group nodes that the code generator emits as one kernel into ``fused`` nodes.

Groups (``attrs["group"]``, the key of the group's C lowering; ``attrs["kind"]`` names the
members for people):

* ``conv``: ``convolution`` (bias included) -> optional eval-mode ``batch_norm`` (the
  convolution's only reader) -> optional residual ``add`` (the batch norm's only reader) ->
  optional ``relu`` -> optional ``max_pool``; or ``convolution`` -> the
  ``batch_norm_stats`` of its output (training-mode batch norm: the epilogue sums each plane
  while it is in cache);
* ``norm``: ``batch_norm`` -> optional residual ``add`` -> ``relu`` (each the only reader of
  the value before it), with the residual's own ``batch_norm`` when the add is its only
  reader;
* ``norm_backward``: training-mode ``batch_norm_backward`` with the prologue of its gradient:
  an ``add`` of two gradients and/or a relu's ``threshold_backward`` when the relu's output is
  the ``norm`` group ``relu(batch_norm(x))`` of the same ``x`` and statistics: the kernel adds
  the two and recomputes the mask from ``x`` (reading the forward's bias too) in both passes;
* ``norm_backward_pair``: the two training-mode ``batch_norm_backward`` of one gradient, its
  only readers: each pass reads the gradient once for both;
* ``gemm``: ``addmm``/``gemm``, or ``mm`` followed by a broadcast bias ``add``, then an optional
  activation (any one-input elementwise op of the registry); ``attrs["roles"]`` names each
  member's part of the epilogue;
* ``elementwise``: a chain of ops with a C expression (elementwise ops, and ``expand``) of one
  output shape;
* ``pointwise_gradient_sum``: the input gradient of a 1x1 convolution (stride 1 or 2, padding
  0, one group, 2-d, float) read by nothing but an ``add`` of a tensor of its shape -> optional
  ``threshold_backward`` of the sum (its only reader): the kernel computes the product per
  image into scratch and adds it into the other gradient in one pass, so the convolution's
  input gradient, zeros between the strided positions, is never written (the ResNet's
  projection shortcuts, ``codegen/lowerings/conv_pointwise_sum.py``);
* ``shortcut_input_gradient``: the input gradients of a 3x3 stride-2 convolution and of a 1x1
  stride-2 one of the same image, each read by nothing but their ``add`` -> optional
  ``threshold_backward`` of the sum (its only reader), where the 3x3's kernel of tiles of 8x8
  values takes the 1x1's product into its even-even values' GEMM and stores the masked sum
  (the ResNet's downsampling blocks, ``codegen/lowerings/conv_winograd_s2.py``);
* ``downsample_weight_gradient``: the weight gradients of a 3x3 stride-2 padding-1
  convolution and of a 1x1 stride-2 one (a ResNet downsampling block's and its shortcut's)
  of the same input and of output gradients of one shape: the 1x1's is the 3x3's centre tap,
  so one kernel reads the input once for both
  (``codegen/lowerings/conv_downsample_weight.py``);
* ``downsample_forward``: a 3x3 stride-2 padding-1 convolution and a 1x1 stride-2 one of the
  same input (a ResNet downsampling block's and its shortcut's), each with what the ``conv``
  group would fuse after it: both the ``batch_norm_stats`` of a training-mode batch norm, or
  neither; an eval-mode batch norm (then relu for the 3x3) each. The shortcut's output at
  (i, j) is its weights times x[2i, 2j], the 3x3 Winograd form's even-even points, so one
  kernel takes it from their V and reads x once for both
  (``codegen/lowerings/conv_downsample_forward.py``);
* ``cross_entropy``: ``log_softmax`` -> ``nll_loss`` over ``[N, C]`` logits with their backward
  (``nll_loss_backward`` -> log_softmax's rule), forward and backward in one kernel;
* ``table_gradient``: an embedding table's gradient with the two products that read it and
  its column sum (a table projection's backward);
* backward groups: ``pool_backward``: ``threshold_backward`` (relu's mask on a pooled
  gradient) -> ``max_pool_backward`` -> optional bias-gradient ``sum``; ``gemm``:
  ``gemm`` -> ``threshold_backward``; ``weight_update``: in a training-step graph a
  weight-gradient ``gemm`` -> that weight's ``sgd_step``, with the layer's input-gradient
  ``gemm`` (and its relu mask) when it reads the same weight.

A fused node's inputs are the values its members read from outside, its outputs the member
values used after it (intermediates needed elsewhere, e.g. saved for backward, stay visible).
The interpreter runs the members, so fusion is checked for equality with the unfused graph.
"""
from .._dtype import float32, float64, int64
from .._sym import same_shape
from ..ir.graph import Node
from ..ops.registry import REGISTRY, op_kind
from .conv_shapes import folds_shortcut, pairs_shortcut_forward


def _pointwise(op):
    """Ops an elementwise kernel computes from their C expression: elementwise ops, and views
    that broadcast (``expand``: its consumers read the source through a broadcast index)."""
    entry = REGISTRY.get(op)
    return entry is not None and entry.c_expr is not None


def _is_activation(node, value):
    """A one-input elementwise op on ``value`` that keeps its dtype: a GEMM epilogue."""
    return op_kind(node.op) == "elementwise" and len(node.inputs) == 1 and \
        node.inputs[0] is value and node.output.dtype is value.dtype


def _sole_user(users, graph, value):
    us = users.get(value, [])
    if len(us) == 1 and value not in graph.outputs:
        return us[0]
    return None


def _only_user_besides_outputs(users, value):
    """The single node reading ``value`` (graph outputs, e.g. saved values, are allowed)."""
    us = users.get(value, [])
    return us[0] if len(us) == 1 else None


class _Fuser:
    """Applies the groups of one fusion pattern in linear time: nodes keep their original
    position as an order key, fused nodes take the key of the member whose place they take,
    and the node list is rebuilt once at the end."""

    def __init__(self, graph):
        self.graph = graph
        self.key = {id(n): i for i, n in enumerate(graph.nodes)}
        self.users = graph.users()
        self.defined = {v: -1 for v in graph.inputs}
        for i, n in enumerate(graph.nodes):
            for v in n.outputs:
                self.defined[v] = i
        self.outputs = set(graph.outputs)
        self.removed = set()
        self.placed = {}

    def fuse(self, members, group, roles=None, reads=(), unread=()):
        """Replace ``members`` by one fused node placed where its first member was if
        everything the group reads is defined by then, else where its last member was.
        ``reads``: values the group's kernel reads besides its members' inputs; ``unread``:
        members' inputs it does not read (not kept alive for it). Returns the fused node, or
        None if the group would break SSA order."""
        if any(id(m) in self.removed for m in members):
            return None
        member_ids = {id(m) for m in members}
        first = min(self.key[id(m)] for m in members)
        last = max(self.key[id(m)] for m in members)
        produced = {v for m in members for v in m.outputs}
        inputs = []
        for v in [v for m in members for v in m.inputs] + list(reads):
            if v not in produced and v not in inputs and v not in unread:
                inputs.append(v)
        movable = all(self.defined[v] < first for v in inputs)
        at = first if movable else last
        exported = []
        for m in members:
            for v in m.outputs:
                outside = [u for u in self.users.get(v, []) if id(u) not in member_ids]
                if any(self.key[id(u)] < at for u in outside):
                    return None  # a reader sits between the members: cannot move the group
                if outside or v in self.outputs:
                    exported.append(v)
        attrs = {"group": group, "kind": _kind_name(group, members)}
        if roles is not None:
            attrs["roles"] = roles
        fused = Node("fused", inputs, attrs, loc=members[-1].loc, members=list(members))
        fused.outputs = exported
        self.key[id(fused)] = at
        for v in exported:
            v.producer = fused
            self.defined[v] = at
        for v in inputs:
            readers = [u for u in self.users.get(v, []) if id(u) not in member_ids]
            self.users[v] = readers + [fused]
        self.removed.update(member_ids)
        self.placed[at] = fused
        return fused

    def finish(self):
        nodes = []
        for i, n in enumerate(self.graph.nodes):
            if i in self.placed:
                nodes.append(self.placed[i])
            if id(n) not in self.removed:
                nodes.append(n)
        self.graph.nodes = nodes


def _conv_groups(graph):
    users = graph.users()
    groups = []
    claimed = set()
    for node in graph.nodes:
        if node.op != "convolution":
            continue
        group = [node]
        bn = _eval_batch_norm(users, graph, node)
        if bn is not None:
            # eval-mode batch norm: a per-channel scale and shift in the epilogue, computed
            # from the running statistics when the kernel runs (they may change between calls)
            group.append(bn)
            add = _residual_add(users, graph, bn)
            if add is not None and id(add) not in claimed:
                claimed.add(id(add))  # a sum of two convolutions goes to the first
                group.append(add)
        else:
            stats = _user_with_op(users, node.output, "batch_norm_stats")
            if stats is not None:
                # training-mode batch norm: the output is written in full (the
                # normalisation and the backward read it), its statistics come with it
                groups.append([node, stats])
                continue
        # the next stage may share its input with later readers (e.g. the backward of a
        # whole training step reads relu's output): those get it as an exported value
        nxt = _user_with_op(users, group[-1].output, "relu")
        if nxt is not None:
            group.append(nxt)
        pool = _user_with_op(users, group[-1].output, "max_pool")
        if pool is not None:
            group.append(pool)
        if len(group) > 1:
            groups.append(group)
    return groups


def _downsample_forward_groups(graph):
    """[the 3x3 stride-2 convolution's ``conv`` group members, the 1x1 stride-2 shortcut's]
    of one input (``conv_shapes.pairs_shortcut_forward``): see the module's docstring. Pairs
    whose parts the pair's kernel does not take (max pooling after either, a relu after the
    shortcut, the statistics of one only) keep their ``conv`` groups."""
    users = graph.users()
    groups = []
    for conv in graph.nodes:
        if conv.op != "convolution":
            continue
        short = next((u for u in users.get(conv.inputs[0], [])
                      if pairs_shortcut_forward(conv, u)), None)
        if short is None:
            continue
        wide = _forward_part(users, graph, conv, (conv, short))
        narrow = _forward_part(users, graph, short, (conv, short))
        if wide is None or narrow is None or any(m.op == "relu" for m in narrow) or \
                (wide[-1].op == "batch_norm_stats") != (narrow[-1].op == "batch_norm_stats"):
            continue
        groups.append(wide + narrow)
    return groups


def _forward_part(users, graph, conv, pair):
    """What ``_conv_groups`` fuses after ``conv`` but a residual add: [conv,
    batch_norm_stats], or [conv] with an eval-mode batch norm (its only reader) and a relu;
    None when a max pooling would join, or a residual add that no other convolution's group
    takes (``_residual_taken``)."""
    part = [conv]
    bn = _eval_batch_norm(users, graph, conv)
    if bn is not None:
        part.append(bn)
        add = _residual_add(users, graph, bn)
        if add is not None and not _residual_taken(users, graph, add, bn, pair):
            return None
    else:
        stats = _user_with_op(users, conv.output, "batch_norm_stats")
        if stats is not None:
            return [conv, stats]
    relu = _user_with_op(users, part[-1].output, "relu")
    if relu is not None:
        part.append(relu)
    if _user_with_op(users, part[-1].output, "max_pool") is not None:
        return None
    return part


def _residual_taken(users, graph, add, bn, pair):
    """Whether the residual ``add`` after ``bn`` goes to the ``conv`` group of its other
    operand: an eval-mode batch norm, the add its only reader, of a convolution outside
    ``pair`` that it alone reads (the ResNet's second 3x3 of the block)."""
    other = _residual(add, bn.output).producer
    if other is None or other.op != "batch_norm" or other.attrs["training"] or \
            _sole_user(users, graph, other.output) is not add:
        return False
    conv = other.inputs[0].producer
    return conv is not None and conv.op == "convolution" and \
        all(conv is not p for p in pair) and _sole_user(users, graph, conv.output) is other


def _eval_batch_norm(users, graph, conv):
    """The eval-mode batch norm of ``conv``'s output when it is that output's only reader."""
    bn = _sole_user(users, graph, conv.output)
    if bn is not None and bn.op == "batch_norm" and not bn.attrs["training"] and \
            bn.inputs[0] is conv.output:
        return bn
    return None


def _residual_add(users, graph, bn):
    """The residual ``add`` that is the only reader of ``bn``'s output, else None."""
    add = _sole_user(users, graph, bn.output)
    if add is not None and add.op == "add" and _residual(add, bn.output) is not None:
        return add
    return None


def _residual(add, value):
    """The other operand of ``add`` (``value`` + it) when it has the sum's shape and dtype: a
    residual connection the convolution's epilogue adds; None otherwise."""
    a, b = add.inputs
    other = b if a is value else a if b is value else None
    if other is None or other is value or other.dtype is not add.output.dtype or \
            not same_shape(other.shape, add.output.shape) or \
            not same_shape(value.shape, add.output.shape):
        return None
    return other


def _norm_groups(graph):
    """batch_norm (not fused into a convolution) -> optional residual ``add`` -> ``relu``,
    each the only reader of the value before it: one pass writing the relu's output. A
    residual that is itself a batch norm read by nothing else joins the group
    (``_normalised_residual``)."""
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op != "batch_norm":
            continue
        group = [node]
        nxt = _sole_user(users, graph, node.output)
        if nxt is not None and nxt.op == "add" and _residual(nxt, node.output) is not None:
            shortcut = _normalised_residual(users, graph, nxt, node)
            group += ([shortcut] if shortcut is not None else []) + [nxt]
            nxt = _sole_user(users, graph, nxt.output)
        if nxt is not None and nxt.op == "relu" and nxt.inputs[0] is group[-1].output:
            groups.append(group + [nxt])
    return groups


def _normalised_residual(users, graph, add, bn):
    """The batch_norm that makes the residual operand of ``add`` (``bn``'s output + it), when
    the add is its only reader and it keeps its input's shape and dtype: normalised in the
    group's pass, its output is never written (the ResNet's projection shortcuts, whose
    batch norms took 41 and 23 us a step on one thread in kernels of their own). Else None."""
    other = _residual(add, bn.output)
    short = other.producer
    if short is None or short.op != "batch_norm" or short is bn or \
            _sole_user(users, graph, other) is not add:
        return None
    x = short.inputs[0]
    if x.dtype is not other.dtype or not same_shape(x.shape, other.shape):
        return None
    return short


def _norm_backward_groups(graph):
    """(members, None, reads, unread): a training-mode batch_norm_backward with the pointwise
    prologue of its gradient, at least one of: the sum of two gradients ``add(a, b)``
    (``_gradient_sum``), then a relu's mask ``threshold_backward(., y)`` where y is a ``norm``
    group's ``relu(batch_norm(x, mean, var, weight, bias))`` of the backward's x, mean, var and
    weight (``_recomputed_mask``). The kernel's passes compute the masked sum from a, b and x,
    so no pass writes the sum or the masked gradient (the ResNet's relus after bn1, and the
    stem's, whose gradient sums the first block's two paths). ``reads``: the forward's bias,
    if any; ``unread``: y, whose buffer is then free for the backward's output (kept alive for
    the fused kernel, the ResNet's step measured 1 % slower: the first block's input gradient
    then wrote a buffer not in cache)."""
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op != "batch_norm_backward" or not node.attrs["training"]:
            continue
        mask = _recomputed_mask(users, graph, node)
        g = mask.inputs[0] if mask is not None else node.inputs[0]
        add = _gradient_sum(users, graph, g, mask if mask is not None else node)
        if add is None and (mask is None or _joins_elementwise(mask)):
            continue
        forward = _relu_batch_norm(mask.inputs[1]) if mask is not None else None
        bias = forward.inputs[-1:] if forward is not None and forward.attrs["has_bias"] else []
        members = ([add] if add is not None else []) + ([mask] if mask is not None else [])
        unread = [mask.inputs[1]] if mask is not None and \
            (add is None or mask.inputs[1] not in add.inputs) else []
        groups.append((members + [node], None, bias, unread))
    return groups


def _recomputed_mask(users, graph, node):
    """The relu's ``threshold_backward(g, y)`` that makes the gradient of ``node`` (a
    batch_norm_backward), read by nothing else, when y is relu(batch_norm) of the backward's
    x, statistics and weight (the kernel recomputes the mask from x); else None."""
    thr = node.inputs[0].producer
    if thr is None or thr.op != "threshold_backward" or thr.attrs["threshold"] != 0.0 or \
            _sole_user(users, graph, thr.output) is not node or \
            not all(same_shape(v.shape, thr.output.shape) for v in thr.inputs):
        return None
    forward = _relu_batch_norm(thr.inputs[1])
    if forward is None or forward.attrs["eps"] != node.attrs["eps"] or \
            forward.attrs["has_weight"] != (len(node.inputs) > 4) or \
            any(a is not b for a, b in zip(forward.inputs, node.inputs[1:])):
        return None
    return thr


def _gradient_sum(users, graph, g, reader):
    """The ``add`` of two gradients of g's shape and dtype that makes ``g``, read by nothing
    but ``reader``, neither addend the output of an elementwise op that only the add reads
    (that op's kernel computes the sum and mask in its pass instead); else None. The sum's
    pass (a, b, y in, the sum out) then the backward's two (g and x; g and x in, dx out) move
    9 tensors, the fused passes (a, b and x; a, b and x in, dx out) 7: the ResNet's stem,
    masked sum and backward 243 + 300 -> 388 us on one thread, 129 + 129 -> 184 us on two."""
    add = g.producer
    if add is None or add.op != "add" or _sole_user(users, graph, g) is not reader or \
            not all(v.dtype is g.dtype and same_shape(v.shape, g.shape) for v in add.inputs):
        return None
    for v in add.inputs:
        if v.producer is not None and _pointwise(v.producer.op) and \
                _sole_user(users, graph, v) is add:
            return None
    return add


def _shared_gradient_norm_backward_groups(graph):
    """[first, second]: the two training-mode ``batch_norm_backward`` reading one gradient g,
    its only readers (a residual block's output gradient reaches its last batch norm and its
    shortcut's, in the ResNet): one kernel whose two passes read g once for both instead of
    once each."""
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op != "batch_norm_backward" or not node.attrs["training"]:
            continue
        g = node.inputs[0]
        readers = users.get(g, [])
        if len(readers) != 2 or readers[0] is not node or g in graph.outputs:
            continue
        other = readers[1]
        if other.op == "batch_norm_backward" and other.attrs["training"] and \
                other.inputs[0] is g and g not in other.inputs[1:] and \
                g not in node.inputs[1:] and other.inputs[1].dtype is g.dtype and \
                node.inputs[1].dtype is g.dtype:
            groups.append([node, other])
    return groups


def _joins_elementwise(thr):
    """Whether the mask's gradient comes from an elementwise op (other than the sum that
    ``_gradient_sum`` takes into the group), whose kernel applies the mask anyway (measured
    on the ResNet's stem before its sum joined the group: (a + b) masked in one pass then the
    batch-norm backward took 108 + 159 us, a + b then the masked backward 121 + 190 us, one
    thread)."""
    g = thr.inputs[0].producer
    return g is not None and _pointwise(g.op)


def _relu_batch_norm(y):
    """The training-mode batch_norm of a ``norm`` group ``relu(batch_norm(...))`` that made
    ``y``, else None."""
    fused = y.producer
    if fused is None or fused.op != "fused" or fused.attrs["group"] != "norm" or \
            [m.op for m in fused.members] != ["batch_norm", "relu"]:
        return None
    bn = fused.members[0]
    return bn if bn.attrs["training"] else None


def _loop_groups(graph):
    """Every ``scan`` with what it may take in: the ``embedding`` whose rows are its first
    scanned input (read by nothing else: float rows of a 2-d table, one index per row), else
    the batch-first ``permute`` of a scanned input (``_unpermuted``); the linear layer after
    it (``_head``), else the batch-first ``permute`` of a stacked output (``_permuted``). A
    list of members per loop that takes any."""
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op != "scan":
            continue
        members = [node] + (_head(graph, users, node) or _permuted(users, node))
        first = _gathered(graph, users, node) or _unpermuted(graph, users, node)
        if first is not None:
            members.insert(0, first)
        if len(members) > 1:
            groups.append(members)
    return groups


def _swaps_two_leading_dims(node):
    return node.op == "permute" and tuple(node.attrs["dims"]) == (1, 0, 2)


def _unpermuted(graph, users, node):
    """The ``permute`` that makes a 3-d scanned input of ``node`` time-major from a
    batch-first value, read by nothing else: the loop copies each step's rows from the
    batch-first value (the backward loop of a ``batch_first`` RNN reads its output gradient
    so), instead of a kernel copying all of them before it. None if none."""
    for x in node.inputs[node.attrs["n_carry"]:node.attrs["n_carry"] + node.attrs["n_xs"]]:
        perm = x.producer
        if perm is not None and _swaps_two_leading_dims(perm) and len(x.shape) == 3 and \
                _sole_user(users, graph, x) is node and node.inputs.count(x) == 1:
            return perm
    return None


def _permuted(users, node):
    """[permute]: the batch-first copy of a 3-d stacked output of ``node``, which the loop
    writes row by row after each step instead of a kernel copying all of them after it (a
    ``batch_first`` RNN's output, when the linear layer's product is not fused: in training
    its weight's gradient reads the rows too). [] if none."""
    for ys in node.outputs[node.attrs["n_carry"]:]:
        perm = next((u for u in users.get(ys, []) if _swaps_two_leading_dims(u) and
                     u.inputs[0] is ys), None)
        if perm is not None and len(ys.shape) == 3:
            return [perm]
    return []


def _gathered(graph, users, node):
    if node.attrs["n_xs"] < 1:
        return None
    xs = node.inputs[node.attrs["n_carry"]]
    emb = xs.producer
    if emb is None or emb.op != "embedding" or len(emb.inputs) != 2 or \
            _sole_user(users, graph, xs) is not node or node.inputs.count(xs) != 1:
        return None
    table, idx = emb.inputs
    if len(table.shape) != 2 or len(idx.shape) < 2 or idx.dtype is not int64 or \
            not same_shape(xs.shape, idx.shape + table.shape[1:]) or table.dtype is not xs.dtype:
        return None
    return emb


def _head(graph, users, node):
    """[permute?, view, gemm]: a float ``x @ W^T (+ b)`` of a stacked output of ``node``
    (``[T, N, H]``) viewed as ``[T * N, H]`` rows, or batch first (its two leading dims
    swapped) as ``[N * T, H]``; the permute and the view read by nothing else. [] if none."""
    for ys in node.outputs[node.attrs["n_carry"]:]:
        if len(ys.shape) != 3 or ys.dtype is not float32:
            continue
        chain, cur = [], ys
        perm = next((u for u in users.get(ys, []) if _swaps_two_leading_dims(u)), None)
        if perm is not None:
            if _sole_user(users, graph, perm.output) is None:
                continue
            chain, cur = [perm], perm.output
        view = _sole_user(users, graph, cur) if chain else \
            next((u for u in users.get(ys, []) if u.op == "view"), None)
        if view is None or view.op != "view" or len(view.output.shape) != 2 or \
                not same_shape(view.output.shape[1:], ys.shape[2:]):
            continue
        gemm = _sole_user(users, graph, view.output)
        if gemm is None or gemm.op != "gemm" or gemm.inputs[0] is not view.output or \
                gemm.inputs.count(view.output) != 1:
            continue
        at = gemm.attrs
        if at.get("trans_a") or not at.get("trans_b") or at.get("alpha", 1.0) != 1.0 or \
                at.get("beta", 1.0) != 1.0 or len(gemm.inputs[1].shape) != 2 or \
                (len(gemm.inputs) == 3 and len(gemm.inputs[2].shape) != 1):
            continue
        return chain + [view, gemm]
    return []


def _cross_entropy_groups(graph):
    """Cross entropy and its backward as autodiff writes them, over ``[N, C]`` float logits:
    ``y = log_softmax(x, 1)`` -> ``nll_loss(y, t)``, and ``gl = nll_loss_backward(g, t)`` ->
    ``gl - exp(y) * gl.sum(1, keepdim)``, with ``y`` and ``gl`` read by nothing else. One pass
    over each row of logits writes the loss and the logits' gradient
    (``codegen/lowerings/loss.py``); the log-probabilities are never stored."""
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op != "log_softmax" or len(node.inputs[0].shape) != 2 or \
                node.attrs["dim"] != 1 or node.output.dtype not in (float32, float64):
            continue
        y = node.output
        readers = users.get(y, [])
        nll = next((u for u in readers if u.op == "nll_loss" and u.inputs[0] is y), None)
        exp = next((u for u in readers if u.op == "exp"), None)
        if nll is None or exp is None or len(readers) != 2 or y in graph.outputs:
            continue
        backward = _softmax_onehot_gradient(graph, users, exp, nll)
        if backward is not None:
            groups.append([node, nll] + backward)
    return groups


def _softmax_onehot_gradient(graph, users, exp, nll):
    """[nll_loss_backward, sum, exp, mul, sub]: log_softmax's backward rule applied to
    nll_loss's gradient (of the same targets, weights and attributes as ``nll``), else None."""
    mul = _sole_user(users, graph, exp.output)
    if mul is None or mul.op != "mul" or mul.inputs[0] is not exp.output:
        return None
    row_sum = mul.inputs[1].producer
    sub = _sole_user(users, graph, mul.output)
    if row_sum is None or row_sum.op != "sum" or tuple(row_sum.attrs["dims"]) != (1,) or \
            not row_sum.attrs["keepdim"] or _sole_user(users, graph, row_sum.output) is not mul or \
            sub is None or sub.op != "sub" or sub.inputs[1] is not mul.output:
        return None
    grad = row_sum.inputs[0].producer
    if grad is None or grad.op != "nll_loss_backward" or sub.inputs[0] is not grad.output or \
            grad.inputs[1:] != nll.inputs[1:] or grad.output in graph.outputs or \
            len(users.get(grad.output, [])) != 2 or \
            any(grad.attrs[k] != nll.attrs[k] for k in ("reduction", "ignore_index")):
        return None
    return [grad, row_sum, exp, mul, sub]


def _table_gradient_groups(graph):
    """[embedding_backward, gemm, gemm, sum?]: a float table's gradient (no
    ``scale_grad_by_freq``) read by nothing but two products that take it as their left
    operand (``a`` or ``a^T``, times a matrix) and maybe its column sum: a table projection's
    backward (``ops/table_projection.py``: the table's and the input weight's gradients, and
    the input bias's). One kernel computes the gradient, the sum and both products
    (``codegen/lowerings/embedding.py``)."""
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op != "embedding_backward" or node.attrs["scale_grad_by_freq"] or \
                node.output in graph.outputs or node.output.dtype not in (float32, float64):
            continue
        readers = users.get(node.output, [])
        gemms = [u for u in readers if u.op == "gemm" and len(u.inputs) == 2 and
                 u.inputs[0] is node.output and u.inputs[1] is not node.output and
                 not u.attrs["trans_b"] and u.attrs["alpha"] == 1.0]
        sums = [u for u in readers if u.op == "sum" and tuple(u.attrs["dims"]) == (0,) and
                u.output.dtype is node.output.dtype]
        if len(gemms) == 2 and len(sums) <= 1 and len(readers) == len(gemms) + len(sums):
            groups.append([node] + gemms + sums)
    return groups


def _user_with_op(users, value, op):
    """The first node of kind ``op`` reading ``value`` as its first input, if any."""
    for u in users.get(value, []):
        if u.op == op and u.inputs[0] is value:
            return u
    return None


def _gemm_groups(graph):
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op not in ("addmm", "mm", "gemm"):
            continue
        group, roles = [node], ["gemm"]
        nxt = _only_user_besides_outputs(users, node.output)
        biasless = node.op == "mm" or (node.op == "gemm" and len(node.inputs) == 2)
        if biasless and nxt is not None and nxt.op == "add" and \
                nxt.output.shape == node.output.shape and len(nxt.inputs[1].shape) <= 1:
            group.append(nxt)
            roles.append("bias")
            nxt = _only_user_besides_outputs(users, nxt.output)
        if nxt is not None and _is_activation(nxt, group[-1].output):
            group.append(nxt)
            roles.append("activation")
        if len(group) > 1:
            groups.append((group, roles))
    return groups


def _elementwise_groups(graph):
    users = graph.users()
    groups = []
    group_of = {}
    for node in graph.nodes:
        if not _pointwise(node.op):
            continue
        shape = node.outputs[0].shape
        # join the groups of every input this node alone reads (a tree of elementwise ops
        # becomes one kernel; members keep graph order)
        joined = None
        for v in node.inputs:
            prod = v.producer
            if prod is None or id(prod) not in group_of:
                continue
            if not same_shape(v.shape, shape) or _sole_user(users, graph, v) is not node:
                continue
            group = group_of[id(prod)]
            if joined is None:
                joined = group
            elif group is not joined:
                for m in group:
                    group_of[id(m)] = joined
                joined.extend(group)
                group.clear()
        if joined is None:
            joined = []
            groups.append(joined)
        joined.append(node)
        group_of[id(node)] = joined
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    return [sorted(g, key=lambda n: position[id(n)]) for g in groups if len(g) > 1]


def _pool_relu_backward_groups(graph):
    """The backward of conv -> relu -> max_pool as autodiff writes it: threshold_backward (the
    relu mask, on the pooled gradient) -> max_pool_backward [-> the bias-gradient sum], one
    pass over each plane."""
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op != "max_pool_backward" or len(node.output.shape) != 4:
            continue
        thr = node.inputs[0].producer
        if thr is None or thr.op != "threshold_backward" or \
                not same_shape(thr.inputs[1].shape, thr.output.shape) or \
                not same_shape(thr.output.shape, node.inputs[0].shape) or \
                _sole_user(users, graph, thr.output) is not node:
            continue
        group = [thr, node]
        bias = next((u for u in users.get(node.output, []) if u.op == "sum" and
                     tuple(u.attrs["dims"]) == (0, 2, 3) and not u.attrs["keepdim"]), None)
        if bias is not None:
            group.append(bias)
        groups.append(group)
    return groups


def _pointwise_gradient_sum_groups(graph):
    """[conv_backward_input, add, threshold_backward?]: see the module's docstring."""
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op != "conv_backward_input" or not _pointwise_strided_gradient(node):
            continue
        add = _sole_user(users, graph, node.output)
        if add is None or add.op != "add" or _residual(add, node.output) is None:
            continue
        groups.append([node, add] + _sum_mask(users, graph, add))
    return groups


def _sum_mask(users, graph, add):
    """[the ``threshold_backward`` of the sum by an operand of its shape and dtype, the sum's
    only reader], or []."""
    mask = _sole_user(users, graph, add.output)
    if mask is not None and mask.op == "threshold_backward" and \
            mask.inputs[0] is add.output and mask.inputs[1] is not add.output and \
            mask.inputs[1].dtype is add.output.dtype and \
            same_shape(mask.inputs[1].shape, add.output.shape):
        return [mask]
    return []


def _shortcut_input_gradient_groups(graph):
    """[conv_backward_input (3x3 stride 2), conv_backward_input (1x1 stride 2), add,
    threshold_backward?]: see the module's docstring; the kernel's conditions are
    ``conv_shapes.folds_shortcut``'s."""
    users = graph.users()
    groups = []
    for add in graph.nodes:
        if add.op != "add" or add.inputs[0] is add.inputs[1] or \
                any(v.producer is None for v in add.inputs) or \
                _residual(add, add.inputs[0]) is None:
            continue
        for conv, shortcut in (add.inputs[0].producer, add.inputs[1].producer), \
                (add.inputs[1].producer, add.inputs[0].producer):
            if folds_shortcut(conv, shortcut) and \
                    _sole_user(users, graph, conv.output) is add and \
                    _sole_user(users, graph, shortcut.output) is add:
                groups.append([conv, shortcut, add] + _sum_mask(users, graph, add))
                break
    return groups


def _pointwise_strided_gradient(node):
    """Whether ``node`` (a ``conv_backward_input``) is the float input gradient of a 2-d 1x1
    convolution of stride 1 or 2, padding 0 and one group, of static channels and sizes."""
    a = node.attrs
    gy, w = node.inputs
    dx = node.output
    if dx.dtype not in (float32, float64) or len(dx.shape) != 4 or len(w.shape) != 4 or \
            tuple(w.shape[2:]) != (1, 1) or a["groups"] != 1 or any(a["padding"]) or \
            len(a["stride"]) != 2 or not set(a["stride"]) <= {1, 2}:
        return False
    sizes = list(dx.shape[1:]) + list(gy.shape[1:])
    if not all(isinstance(d, int) for d in sizes):
        return False
    # the sizes a forward convolution gives (a transposed one's output_padding adds at most a
    # row and a column, past the last strided position)
    return all(0 < (o - 1) * s + 1 <= i <= o * s for i, o, s in
               zip(dx.shape[2:], gy.shape[2:], a["stride"]))


def _downsample_weight_gradient_groups(graph):
    """[conv_backward_weight 3x3, conv_backward_weight 1x1] of one input: see the module's
    docstring."""
    users = graph.users()
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    groups = []
    for short in graph.nodes:
        if short.op != "conv_backward_weight" or \
                not _strided_weight_gradient(short, kernel=(1, 1), padding=(0, 0)):
            continue
        wide = next((u for u in users.get(short.inputs[1], [])
                     if u.op == "conv_backward_weight" and u.inputs[1] is short.inputs[1] and
                     u.inputs[0] is not short.inputs[0] and
                     u.inputs[0].dtype is short.inputs[0].dtype and
                     tuple(u.inputs[0].shape) == tuple(short.inputs[0].shape) and
                     _strided_weight_gradient(u, kernel=(3, 3), padding=(1, 1))), None)
        if wide is not None:
            groups.append(sorted([wide, short], key=lambda m: position[id(m)]))
    return groups


def _strided_weight_gradient(node, kernel, padding):
    """Whether ``node`` (a ``conv_backward_weight``) is the float weight gradient of a 2-d
    convolution of that kernel size and padding, stride 2, no dilation and one group, of
    static channels and sizes."""
    a = node.attrs
    gy, x = node.inputs
    dw = node.output
    return dw.dtype in (float32, float64) and len(x.shape) == 4 and len(dw.shape) == 4 and \
        tuple(dw.shape[2:]) == kernel and tuple(a["padding"]) == padding and \
        tuple(a["stride"]) == (2, 2) and tuple(a["dilation"]) == (1, 1) and \
        a["groups"] == 1 and all(isinstance(d, int) for d in list(x.shape[1:]) + list(dw.shape))


def _gemm_mask_groups(graph):
    """gemm -> threshold_backward: the input gradient of a linear layer masked by the relu
    that followed it, applied in the gemm's epilogue."""
    users = graph.users()
    groups = []
    for node in graph.nodes:
        if node.op != "gemm":
            continue
        thr = _sole_user(users, graph, node.output)
        if thr is not None and thr.op == "threshold_backward" and \
                thr.inputs[0] is node.output and same_shape(thr.inputs[1].shape, node.output.shape):
            groups.append(([node, thr], ["gemm", "mask"]))
    return groups


def _gemm_sgd_groups(graph):
    """gemm (a weight gradient) -> sgd_step: the update runs on each block of gradient rows
    right after the GEMM wrote it, while it is in cache. The step writes the parameter in
    place, so every other reader of the parameter (or of a view of it) must come before.
    When one of those readers is the layer's input gradient ``dy @ W`` (of the same ``dy``,
    optionally masked by a relu), it joins the group: at small batch one pass over W reads
    the old weights for it and updates them (roles ``input_grad``, ``mask``)."""
    users = graph.users()
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    groups = []
    for node in graph.nodes:
        if node.op != "sgd_step":
            continue
        gemm = node.inputs[1].producer
        if gemm is None or gemm.op != "gemm" or len(gemm.inputs) != 2 or \
                [u for u in users.get(gemm.output, []) if u is not node]:
            continue
        aliases, readers = [node.inputs[0]], []
        while aliases:
            for u in users.get(aliases.pop(), []):
                if op_kind(u.op) == "view":  # its readers read the parameter
                    aliases.extend(u.outputs)
                elif u is not node:
                    readers.append(u)
        if not all(position[id(r)] < position[id(gemm)] for r in readers):
            continue
        dx = next((r for r in readers if _input_gradient_of(r, gemm, node.inputs[0])), None)
        # the group takes the input gradient's place: no other reader may sit after it
        if dx is None or any(position[id(r)] > position[id(dx)] for r in readers):
            groups.append(([gemm, node], ["gemm", "update"]))
            continue
        members, roles = [dx], ["input_grad"]
        mask = _sole_user(users, graph, dx.output)
        if mask is not None and mask.op == "threshold_backward" and \
                mask.inputs[0] is dx.output and same_shape(mask.inputs[1].shape, dx.output.shape):
            members.append(mask)
            roles.append("mask")
        groups.append((members + [gemm, node], roles + ["gemm", "update"]))
    return groups


def _input_gradient_of(node, weight_gradient, weight):
    """Whether ``node`` is ``dy @ W`` for the ``dy`` of ``weight_gradient`` (``dy^T @ x``)."""
    g = weight_gradient
    return node.op == "gemm" and len(node.inputs) == 2 and node.inputs[1] is weight and \
        node.inputs[0] is g.inputs[0] and g.attrs["trans_a"] and not g.attrs["trans_b"] and \
        not node.attrs["trans_a"] and not node.attrs["trans_b"] and \
        node.attrs["alpha"] == 1.0 and g.attrs["alpha"] == 1.0


def fuse(graph):
    """Apply every fusion pattern (in loop bodies too); returns the graph (modified in
    place)."""
    for body in graph.bodies():
        fuse(body)
    for finder, group_name in ((_loop_groups, "loop"),
                               (_downsample_forward_groups, "downsample_forward"),
                               (_conv_groups, "conv"), (_norm_groups, "norm"),
                               (_norm_backward_groups, "norm_backward"),
                               (_shared_gradient_norm_backward_groups, "norm_backward_pair"),
                               (_pool_relu_backward_groups, "pool_backward"),
                               (_cross_entropy_groups, "cross_entropy"),
                               (_gemm_sgd_groups, "weight_update"), (_gemm_mask_groups, "gemm"),
                               (_table_gradient_groups, "table_gradient"),
                               (_gemm_groups, "gemm"),
                               (_shortcut_input_gradient_groups, "shortcut_input_gradient"),
                               (_pointwise_gradient_sum_groups, "pointwise_gradient_sum"),
                               (_downsample_weight_gradient_groups, "downsample_weight_gradient"),
                               (_elementwise_groups, "elementwise")):
        fuser = _Fuser(graph)
        for found in finder(graph):
            # members, or (members, roles[, reads[, unread]])
            found = found if isinstance(found, tuple) else (found,)
            fuser.fuse(found[0], group_name, *found[1:])
        fuser.finish()
    _mark_rows_split(graph)
    return graph.renumber()


def _mark_rows_split(graph):
    """Mark the fused forward GEMMs (``x @ W^T``) of weights that a ``weight_update`` group
    updates: at a batch of one both kernels split W's rows between threads the same way, so
    each core keeps its rows in its own cache (``codegen/lowerings/weight_update.py``)."""
    updated = {id(n.members[-1].inputs[0]) for n in graph.nodes
               if n.op == "fused" and n.attrs["group"] == "weight_update"}
    for node in graph.nodes:
        if node.op == "fused" and node.attrs["group"] == "gemm":
            g = node.members[0]
            if id(g.inputs[1]) in updated and g.attrs["trans_b"] and not g.attrs["trans_a"]:
                node.attrs["rows_split"] = True


def _kind_name(group, members):
    if group == "elementwise":
        return "elementwise"
    return "_".join(m.op if m.op != "convolution" else "conv" for m in members)

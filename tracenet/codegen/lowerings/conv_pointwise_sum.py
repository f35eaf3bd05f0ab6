"""C lowering of the ``pointwise_gradient_sum`` group (``passes/fusion.py``): the input
gradient of a 1x1 convolution (stride 1 or 2, padding 0, one group) added to another gradient
of its shape, then maybe masked by a relu's ``threshold_backward``, in one kernel.

Per image and block of input channels, the product W^T @ dY[n] ([C x O] times [O x P], the
gradient at the strided positions) goes into a per-thread scratch panel, small enough to stay
in cache; one pass over the image's rows then writes the sum's expression (the registry's C
expressions of the add and the mask) from the other gradient, the mask operand and the panel's
row, interleaved with zeros for stride 2 (odd rows: the product is zero there). The
convolution's own input gradient, three quarters zeros for stride 2, is never written or read
back: in the ResNet's training step its kernel and the add's took 192 + 284 us (16->32
shortcut, one thread).

The ``shortcut_input_gradient`` group (the same shortcut's input gradient added to a 3x3
stride-2 convolution's, then maybe masked) goes to the 3x3's kernel instead
(``conv_winograd_s2.py``): its GEMM of the even-even values takes the shortcut's product, so
neither input gradient is written before the sum."""
from ...ops.cexpr import scalar
from ...ops.common import numel
from ..base import Kernel, SFX, ctype, group_lowering, members, node_lines, signature, \
    threads_scratch
from ..templates import render
from . import conv, conv_nonfinite, conv_winograd_s2
from .conv import _conv_grad_geometry
from .elementwise import c_expr

# A block of input channels' products fits this many bytes (a core's L1 data cache is 32-48
# KiB): the pass reads each row back while it is in cache. The ResNet's images, 16 x 256 and
# 32 x 64 products (16 and 8 KiB), are one block each.
PRODUCT_BYTES = 32 << 10


@group_lowering("pointwise_gradient_sum")
def lower_pointwise_gradient_sum(name, node, exported, target):
    group = members(node)
    conv = group[0]
    gy, w = conv.inputs
    out = group[-1].output
    ct = ctype(out)
    geo = _geometry(conv, ct)
    produced = {m.output for m in group}
    # the add's other addend and the mask's operand: read at the row being written
    operands = [v for m in group[1:] for v in m.inputs if v not in produced]
    reads, role_of = [], {}
    for role, v in [("gy", gy), ("w", w)] + [(f"in{j}", v) for j, v in enumerate(operands)]:
        if v not in role_of:
            role_of[v] = role
            reads.append((role, v))
    writes = [("out", out)]
    rows = sorted({role_of[v] for v in operands})
    parallel = target.parallel.memory(numel(out.shape), geo["N"] * geo["NB"])
    per_thread = geo["CB"] * geo["P"] + (geo["SW"] * geo["OW"] if geo["SW"] > 1 else 0)
    src = render("conv_pointwise_sum.c.j2", name=name, node_lines=node_lines(group),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 parallel=parallel, per_thread=per_thread, rows=rows,
                 strided_lines=_lines(group, role_of, "z[j]"),
                 zero_lines=_lines(group, role_of, "0"), **geo)
    return Kernel(name, reads, writes, src, threads_scratch(per_thread, parallel), ct,
                  flops=2 * geo["N"] * geo["O"] * geo["C"] * geo["P"], parallel=bool(parallel))


def _geometry(conv, ct):
    """The sizes the template reads: N images of C x H x W, O x OH x OW output gradients (P
    positions), strides SH and SW, and CB channels per product block (NB blocks)."""
    gy, dx = conv.inputs[0], conv.output
    n, c, h, w = dx.shape
    o, oh, ow = gy.shape[1:]
    sh, sw = conv.attrs["stride"]
    p = oh * ow
    cb = max(1, min(c, PRODUCT_BYTES // (p * (4 if ct == "float" else 8))))
    return dict(N=n, C=c, H=h, W=w, O=o, OH=oh, OW=ow, P=p, SH=sh, SW=sw, CB=cb,
                NB=-(-c // cb))


def _lines(group, role_of, product):
    """The C lines of the add (and mask) at position j of a row: the convolution's gradient is
    ``product``, every other operand its row's element; the last line stores the result."""
    conv = group[0]
    expr_of = {conv.output: product}
    lines = []
    for k, m in enumerate(group[1:]):
        args = [expr_of.get(v) or f"{role_of[v]}_r[j]" for v in m.inputs]
        lines.append(f"const {ctype(m.output)} t{k} = {c_expr(m, args)};")
        expr_of[m.output] = f"t{k}"
    lines.append(f"out_r[j] = t{len(group) - 2};")
    return lines


@group_lowering("shortcut_input_gradient")
def lower_shortcut_input_gradient(name, node, exported, target):
    """[3x3 stride-2 input gradient, 1x1 stride-2 input gradient, add, threshold_backward?]
    (``passes/fusion.py``): the 3x3's kernel of tiles of 8x8 values with the shortcut's
    product in its even-even points' GEMM and the mask applied as it stores."""
    group = members(node)
    conv, shortcut, add = group[:3]
    mask = group[3] if len(group) > 3 else None
    (gy, w), (gs, ws) = conv.inputs, shortcut.inputs
    out = group[-1].output
    reads, role_of = [], {}
    named = [("gy", gy), ("w", w), ("gys", gs), ("ws", ws)] + \
        ([("y", mask.inputs[1])] if mask is not None else [])
    for role, v in named:
        if v not in role_of:
            role_of[v] = role
            reads.append((role, v))
    geo = _conv_grad_geometry(conv, out.shape, w.shape, gy.shape)
    ct = ctype(out)
    n, cis = out.shape[0], gs.shape[1]
    fold = dict(nodes=group, reads=reads, writes=[("out", out)],
                flops=2 * n * cis * geo["C"] * geo["OH"] * geo["OW"],
                SUM=dict(CIS=cis, gys=role_of[gs], ws=role_of[ws],
                         mask=role_of[mask.inputs[1]] if mask is not None else None,
                         THR=scalar(mask.attrs["threshold"], ct) if mask is not None else None),
                masked=(lambda g, y: c_expr(mask, [g, y])) if mask is not None else None)
    kernel = conv_winograd_s2.lower_backward_input(f"{name}_winograd", conv, geo, target, fold)
    direct = _direct_shortcut_sum(f"{name}_direct", group, reads, role_of, target)
    return conv_nonfinite.checked(name, kernel, direct, [])  # (its own notes)


def _direct_shortcut_sum(name, group, reads, role_of, target):
    """The group's direct twin (``conv_nonfinite.py``): the 3x3's input gradient by its direct
    kernel into the output, then the shortcut's input gradient added and the mask applied as
    eager mode computes them (``conv_shortcut_sum_direct.c.j2``)."""
    wide_node, shortcut = group[:2]
    out = group[-1].output
    ct = ctype(out)
    wide = conv._lower_conv_backward_input(f"{name}_3x3", wide_node, target, winograd=False)
    roles = dict(role_of)
    roles[wide_node.output] = "out"  # (the 3x3's gradient, then the sum, in the output)
    gs, ws = shortcut.inputs
    n, c, h, w = out.shape
    writes = [("out", out)]
    lines = _lines(group[1:], roles, "z")
    rows = sorted({role_of[v] for m in group[2:] for v in m.inputs if v in role_of})
    src = render("conv_shortcut_sum_direct.c.j2", name=name, ctype=ct,
                 signature=signature(reads, writes, wide.scratch, ct), wide=wide,
                 wide_call=conv_nonfinite.call(wide, roles), N=n, C=c, H=h, W=w,
                 CS=gs.shape[1], OH=gs.shape[2], OW=gs.shape[3], gys=role_of[gs],
                 ws=role_of[ws], rows=rows, lines=lines)
    return Kernel(name, reads, writes, src, wide.scratch, ct, flops=wide.flops,
                  parallel=wide.parallel, helpers=wide.helpers)

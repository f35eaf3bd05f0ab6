"""C lowering of the ``downsample_forward`` group (``passes/fusion.py``): a ResNet downsampling
block's 3x3 stride-2 padding-1 convolution and its 1x1 stride-2 shortcut, both of the block
input x, in one kernel.

The shortcut's output at (i, j) is W_s x[2i, 2j]. In the 3x3's Winograd form of its phases
(``conv_winograd_s2.py``) x[2i, 2j] are the odd points of each input tile in both dims, which
take the centre tap w1 as they are: V's rows of those 16 points (tiles of 4x4 outputs; 4 for
2x2) are x at the strided positions, the point (i, k) of a tile its shortcut output (i, k). So
after the 3x3's products and outputs of a block, the shortcut's weights times that V, a chunk
of channels at a time (``_winograd_s2_shortcut.c.j2``), are its outputs, stored with its own
epilogue (its eval-mode batch norm folded in, or its batch statistics summed from the
registers) while the chunk is in the first-level cache. x is read and split once for both.
With float32 and AVX-512 only (``_paired``); elsewhere the two kernels run one after the
other.
"""
from ..base import Kernel, ctype, group_lowering, members, node_lines, signature
from ..templates import render
from .conv import _batch_norm_reads, _conv_geometry, _forward_checked, _lower_conv_group, \
    _statistics_writes
from .conv_nonfinite import call, scratch_for_either
from . import conv_winograd_s2


@group_lowering("downsample_forward")
def lower_downsample_forward(name, node, exported, target):
    group = members(node)
    split = next(i for i, m in enumerate(group[1:], 1) if m.op == "convolution")
    wide, narrow = group[:split], group[split:]
    conv = wide[0]
    if not _paired(conv, target):
        return _one_after_the_other(name, group, wide, narrow, exported, target)
    geo = _conv_geometry(conv)
    reads = [("x", conv.inputs[0]), ("w", conv.inputs[1])]
    if len(conv.inputs) > 2:
        reads.append(("b", conv.inputs[2]))
    bn = _batch_norm_reads(wide, reads)
    writes = []
    stats = _statistics_writes(wide, exported, writes)
    plane_out, relu_out = _plane_writes(wide, exported, writes)
    shortcut = _shortcut(narrow, exported, reads, writes)
    assert conv_winograd_s2.takes_forward(geo, shortcut["ctype"], target), \
        "passes/conv_shapes.pairs_shortcut_forward and takes_forward disagree"
    paired = conv_winograd_s2.lower_forward(f"{name}_winograd", group, geo, reads, writes,
                                            plane_out, relu_out, bn, False, stats, target,
                                            shortcut)
    direct = _one_after_the_other(f"{name}_direct", group, wide, narrow, exported, target,
                                  paired, winograd=False)
    return _forward_checked(name, paired, direct)


def _plane_writes(part, exported, writes):
    """The 3x3 part's outputs: (the role of the planes written first, the role of relu's
    output written beside them or None), as ``conv._lower_conv_group`` names them."""
    relu = next((m for m in part if m.op == "relu"), None)
    conv_v = next(m for m in reversed(part) if m.op in ("convolution", "batch_norm")).output
    plane_out = relu_out = None
    if conv_v in exported:
        writes.append(("conv_out", conv_v))
        plane_out = "conv_out"
    if relu is not None and relu.output in exported:
        writes.append(("relu_out", relu.output))
        relu_out, plane_out = ("relu_out", plane_out) if plane_out else (None, "relu_out")
    assert plane_out is not None, "a conv group must export its last value"
    return plane_out, relu_out


def _shortcut(part, exported, reads, writes):
    """The shortcut part's reads and writes appended (roles ``ws``, ``bs``, ``sbn_*``,
    ``short_out``, ``short_mean_out``, ``short_var_out``); what the template needs of it."""
    conv = part[0]
    out = part[-1].output if part[-1].op == "batch_norm" else conv.output
    reads.append(("ws", conv.inputs[1]))
    if len(conv.inputs) > 2:
        reads.append(("bs", conv.inputs[2]))
    bn = _batch_norm_reads(part, reads, "sbn_")
    stats = _statistics_writes(part, exported, writes, "short_")
    writes.append(("short_out", out))
    x, w = conv.inputs[0], conv.inputs[1]
    n, oh, ow = conv.output.shape[0], conv.output.shape[2], conv.output.shape[3]
    return dict(CO=w.shape[0], bn=bn, stats=stats, has_bias=len(conv.inputs) > 2,
                ctype=ctype(out),
                flops=2 * n * w.shape[0] * x.shape[1] * oh * ow)


def _paired(conv, target):
    """Whether the pair runs as one kernel: float32 with AVX-512, whose product tiles take the
    shortcut's rows. Elsewhere its products on the GEMM core cost more than the shortcut's own
    kernel (AVX2 only, the ResNet's inference, one thread, medians of 30 calls: 16 -> 32 813
    against 643 + 147 us, 32 -> 64 703 against 549 + 109 us)."""
    return ctype(conv.output) == "float" and target.vector_bits >= 512


def _one_after_the_other(name, group, wide, narrow, exported, target, like=None,
                         winograd=True):
    """The two parts by their own kernels (``conv._lower_conv_group``), called in turn from
    one function (they share the scratch: neither runs while the other does). ``like``: a
    kernel whose arguments (roles and order) this one takes, as the paired kernel's direct
    twin does (``conv_nonfinite.py``: then ``winograd`` False)."""
    parts = [_lower_conv_group(f"{name}_{role}", part, exported, target, winograd)
             for role, part in (("wide", wide), ("shortcut", narrow))]
    if like is not None:
        reads, writes = like.reads, like.writes
        roles = {v: role for role, v in reads + writes}
    else:
        reads, writes, roles = [], [], {}
        for k in parts:
            for role, v in k.reads + k.writes:
                if v not in roles:
                    roles[v] = f"{k.name[len(name) + 1:]}_{role}"
                    (writes if (role, v) in k.writes else reads).append((roles[v], v))
    calls = [call(k, {v: roles[v] for _, v in k.reads + k.writes}) for k in parts]
    scratch = scratch_for_either(parts[0].scratch, parts[1].scratch)
    ct = ctype(wide[0].output)
    src = render("conv_downsample_forward.c.j2", name=name, node_lines=node_lines(group),
                 signature=signature(reads, writes, scratch, ct), parts=parts, calls=calls)
    return Kernel(name, reads, writes, src, scratch, ct, flops=sum(k.flops for k in parts),
                  parallel=any(k.parallel for k in parts),
                  helpers=[h for k in parts for h in k.helpers])

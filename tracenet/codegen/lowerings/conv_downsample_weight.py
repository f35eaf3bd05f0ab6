"""C lowering of the ``downsample_weight_gradient`` group (``passes/fusion.py``): the weight
gradients of a ResNet downsampling block's 3x3 stride-2 padding-1 convolution and of its 1x1
stride-2 shortcut, both of the block input x, in one kernel.

The shortcut's weight gradient is dY_s times x at the even-even positions, which are the 3x3
convolution's centre tap in its gathered GEMM (``conv_backward_weight.c.j2``). With AVX-512
and float32 the kernel (``conv_downsample_weight.c.j2``) runs the 3x3 gradient's gathered
tiles on each channel's padded planes as its own kernel does, keeps the centre tap's inputs of
each channel (the even elements of the planes' even rows) and then sums the shortcut's
gradient from them and its output gradient as it is: dot products along the positions in
tiles of 4 output x 4 input channels, their lanes added by a tree of shuffles once a call. x
is read and copied once for both, and the shortcut's output gradient is never transposed.
(A row of shortcut accumulators in the 3x3 tile itself needed the shortcut's output gradient
transposed beside the 3x3's: the two, 64 KiB an image, no longer stay in the first-level
cache while each channel's tiles read them, and the ResNet's 16->32 pair took 461 -> 575 us.)
Elsewhere (float64, AVX2-only builds, odd sizes, channels not in fours) the kernel calls the
two weight gradients' own kernels one after the other: the same code as without the group.
"""
from ..base import Kernel, SFX, ctype, group_lowering, members, node_lines, signature, \
    threads_scratch
from ..templates import render
from . import conv
from .conv_nonfinite import call, scratch_for_either
from .conv_flops import conv_flops


@group_lowering("downsample_weight_gradient")
def lower_downsample_weight_gradient(name, node, exported, target):
    wide, short = _wide_and_shortcut(members(node))
    gy, x = wide.inputs
    gys = short.inputs[0]
    out, outs = wide.output, short.output
    geo = conv._conv_grad_geometry(wide, x.shape, out.shape, gy.shape)
    reads, writes = [("gy", gy), ("x", x), ("gys", gys)], [("out", out), ("outs", outs)]
    fused = _fused_geometry(geo, ctype(out), target)
    if fused is None:
        return _one_after_the_other(name, node, wide, short, reads, writes, target)
    return _lower_fused(name, node, geo, fused, reads, writes, target)


def _wide_and_shortcut(group):
    """The 3x3 convolution's weight gradient and the 1x1 shortcut's, in that order."""
    wide = next(m for m in group if tuple(m.output.shape[2:]) != (1, 1))
    short = next(m for m in group if m is not wide)
    return wide, short


def _fused_geometry(geo, ct, target):
    """The gathered geometry of the 3x3 weight gradient with its AVX-512 tile and its
    channel-plane copies (``conv.py``), the tap the shortcut shares (``centre``: the one at
    the window's offset 0, whose input is x at the strided positions), the shortcut tiles' lane
    sums (``tree``) and each thread's scratch; None where the fused form does not apply
    (float64, no AVX-512, more than one group, positions of a call past one chunk of the tile,
    channels not in fours, positions not whole vectors of 16, output rows not whole halves of
    a vector or an odd width: the centre tap's inputs are the even elements of whole vectors)."""
    if ct != "float" or target.vector_bits < 512 or geo["G"] != 1 or geo["O"] % 4 or \
            geo["C"] % 4 or (geo["OH"] * geo["OW"]) % 16 or geo["OW"] % 8 or \
            geo["W"] != 2 * geo["OW"]:
        return None
    gathered = conv._gathered_geometry(geo, ct)
    if gathered is None:
        return None
    conv._batch_gathered_images(gathered, geo)
    gathered["wide"] = conv._gathered_weight_tile(geo, ct, target)
    if not (gathered["wide"] and conv._channel_planes(gathered, geo)):
        return None
    ib, p, o = gathered["images"], gathered["P"], geo["O"]
    planes = _aligned_planes(geo, ib)
    # the transposed output gradient, one channel's padded planes of the call's images and the
    # centre tap's inputs, then the sums on their own cache lines
    work = ib * p * o + ib * planes["plane"] + _PLANES_SLACK + geo["C"] * ib * p
    sums = (gathered["K"] + geo["C"]) * o  # [C x taps][O] and the shortcut's [O][C]
    return dict(gathered, **planes, work=work, per_thread=work + sums,
                centre=(geo["PH"] // geo["DH"]) * geo["KW"] + geo["PW"] // geo["DW"],
                tree=_lane_sums_tree(), transpose16=conv._transpose16_stages())


def _aligned_planes(geo, images):
    """One channel's padded planes of a call's images with each row's data on a cache line:
    rows of ``WP`` elements (a whole number of lines), the data from column ``left`` (the
    padding before it in the row, the padding after it the next row's first columns), the
    planes ``plane`` apart; the tile's tap offsets (``taps``) and each position's window start
    (``planes``)."""
    line = 16
    left = -(-geo["PW"] // line) * line
    wp = left + -(-geo["W"] // line) * line
    plane = (geo["H"] + 2 * geo["PH"]) * wp
    positions = [b * plane + geo["SH"] * oh * wp + geo["SW"] * ow + left - geo["PW"]
                 for b in range(images) for oh in range(geo["OH"]) for ow in range(geo["OW"])]
    taps = [kh * geo["DH"] * wp + kw * geo["DW"] for kh in range(geo["KH"])
            for kw in range(geo["KW"])]
    return dict(WP=wp, left=left, plane=plane, planes=positions, taps=taps)


# zeros past the last plane: the last row's padding after its data
_PLANES_SLACK = 16


def _lane_sums_tree():
    """The shuffles that add the lanes of a shortcut tile's 16 accumulators into one vector:
    four levels, each adding the lower and the upper halves of each block of lanes of a pair
    (8 pairs, then 4, 2, 1); fed in bit-reversed order, lane t ends up with accumulator t."""
    levels = []
    inputs = [f"a{int(f'{m:04b}'[::-1], 2)}" for m in range(16)]
    for depth, half in enumerate((8, 4, 2, 1)):
        lo, hi = [], []
        for block in range(0, 16, 2 * half):
            lo += list(range(block, block + half)) + list(range(16 + block, 16 + block + half))
            hi += list(range(block + half, block + 2 * half)) + \
                list(range(16 + block + half, 16 + block + 2 * half))
        levels.append(dict(inputs=inputs, lo=lo, hi=hi, count=len(inputs) // 2))
        inputs = [f"t{depth + 1}_{m}" for m in range(len(inputs) // 2)]
    return levels


def _lower_fused(name, node, geo, fused, reads, writes, target):
    """The fused kernel (``_fused_geometry``): each thread sums its share of the batch, then
    the threads' sums are added."""
    ct = "float"
    flops = conv_flops(geo) + 2 * geo["N"] * geo["O"] * geo["C"] * fused["P"]
    parallel = target.parallel.compute(flops, geo["N"])
    src = render("conv_downsample_weight.c.j2", name=name, node_lines=node_lines(members(node)),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 parallel=parallel, f=fused, max_threads="TN_MAX_THREADS", parts=(), **geo)
    return Kernel(name, reads, writes, src, threads_scratch(fused["per_thread"], parallel), ct,
                  flops=flops, parallel=parallel)


def _one_after_the_other(name, node, wide, short, reads, writes, target):
    """The two weight gradients by their own kernels, called in turn from one function (they
    share the scratch: neither runs while the other does)."""
    first = conv.lower_conv_backward_weight(f"{name}_wide", wide, set(wide.outputs), target)
    second = conv.lower_conv_backward_weight(f"{name}_shortcut", short, set(short.outputs),
                                             target)
    roles = {v: role for role, v in reads + writes}
    calls = [call(k, roles) for k in (first, second)]
    scratch = scratch_for_either(first.scratch, second.scratch)
    ct = ctype(wide.output)
    src = render("conv_downsample_weight.c.j2", name=name, node_lines=node_lines(members(node)),
                 signature=signature(reads, writes, scratch, ct), parts=(first, second),
                 calls=calls)
    return Kernel(name, reads, writes, src, scratch, ct, flops=first.flops + second.flops,
                  parallel=first.parallel or second.parallel,
                  helpers=first.helpers + second.helpers)

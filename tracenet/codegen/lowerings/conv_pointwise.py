"""C lowerings of 1x1 convolutions (padding 0, one group, no depth; any stride): forward,
input gradient and weight gradient, each one plain GEMM per image.

A 1x1 convolution of image n is Y[n] = W [O x C] @ Xs[n] [C x P], with Xs the input
subsampled by the stride (the image itself for stride 1) and P the output positions. The
strided subsample is gathered once per image into a packed panel, so the GEMM reads
contiguous rows. The input gradient is W^T @ dY[n] in the strided positions of dX[n], the
others written as zeros: for stride 2 on even sizes the template's own register tiles store
it there directly, else a panel is scattered back. The weight gradient sums dY[n] @ Xs[n]^T
over the images, each thread its share of the batch, with Xs[n] transposed so the GEMM's
vectors run along the input channels and its long dimension (the positions) is the
reduction. ``lowerings/conv.py`` hands a convolution here when ``applies`` says so; the fused
epilogues (bias, eval-mode batch norm, residual add, relu, a training-mode batch norm's
statistics) are those of its kernel; max
pooling stays there.

The float32 forward of stride 2 on an image of twice the output's size has a form of its own
(``_tiles``; the template's ``tiles``): the even-even positions gathered by vector shuffles,
then register tiles of output channels x vectors of positions that span the image's positions,
with the epilogue on the registers (a training-mode batch norm's statistics summed there per
lane, as deviations from each channel's first value) and the next image's rows prefetched
among the products. AVX-512's tiles are 16-float vectors (``_zmm_forward``), AVX2's 8-float
ones, 6 channels x 2 vectors (``_ymm_forward``), whose gather shuffles within the vectors'
16-byte halves.
"""
from ..base import Kernel, SFX, ctype, node_lines, signature, threads_scratch
from ..templates import render
from .conv_flops import conv_flops
from .normalization import statistics_scratch


def applies(geo, ct):
    """Whether a convolution of geometry ``geo`` (``conv.py``'s 3-d form) is a 1x1 one this
    module lowers."""
    return (ct in SFX and geo["G"] == 1 and geo["D"] == 1 and geo["OD"] == 1 and
            geo["KD"] == geo["KH"] == geo["KW"] == 1 and
            geo["PD"] == geo["PH"] == geo["PW"] == 0)


def takes_input_gradient(geo, ct, target):
    """Whether the input gradient of such a convolution is lowered here: only with AVX-512's
    registers (``target.vector_bits``). Interleaved A/Bs of the ResNet's kernels against the
    general kernel (im2col columns, col2im): 16->32 shortcut 1.05-1.24x, 32->64 0.94-1.01x
    with AVX-512; 0.83x and 0.80x with AVX2 only, whose shuffles that interleave the
    gradients with zeros cross the vectors' halves."""
    return applies(geo, ct) and target.vector_bits >= 512


_VL = {"float": 8, "double": 4}  # elements per vector of the GEMM core (32 bytes)

# An input gradient of this many bytes or more (a core's L2 on Zen 4) is stored past the caches
# by the fused scatter's tiles: its lines are not read before being written, and it does not
# evict the output gradient that the weight gradient reads next. The ResNet's shortcuts, one
# thread: 32->64 148-152 -> 88-99 us, 16->32 138-163 -> 114-115 us; the kernels that later add
# these gradients read them back from memory, +5-19 us.
STREAMED_GRADIENT_BYTES = 1 << 20


def _scratch(per_thread, parallel, shared=0):
    return threads_scratch(per_thread, parallel, shared) if per_thread or shared else 0


def _template_geo(geo):
    """The sizes the template reads: P output positions, and whether the input is strided
    (then gathered into a packed [C x P] panel)."""
    p = geo["OH"] * geo["OW"]
    strided = geo["SH"] != 1 or geo["SW"] != 1
    return dict(geo, P=p, strided=strided)


def _zmm_forward(geo, ct, target):
    """Whether the forward takes AVX-512's form (``zgather`` and the ``z`` tiles in the
    template): float32, stride 2 both ways on an image of twice the output's size, each 16-float
    vector of positions the even elements of two input rows' vectors (output rows of a multiple
    of 16 positions, or of 8: then two output rows a vector)."""
    return (ct == "float" and target.vector_bits >= 512 and geo["SH"] == geo["SW"] == 2 and
            geo["H"] == 2 * geo["OH"] and geo["W"] == 2 * geo["OW"] and
            (geo["OW"] % 16 == 0 or (geo["OW"] == 8 and geo["OH"] % 2 == 0)))


# vectors of 16 positions a tile of the forward's AVX-512 form spans, with the statistics (4
# channels: 16 accumulators, 8 sums in registers) and without (6 channels: 24 accumulators)
_ZMM_POSITION_VECTORS = 4


def _ymm_forward(geo, ct, target):
    """Whether the forward takes AVX2's form (the same template code in 8-float vectors): where
    AVX-512's does not, float32, stride 2 both ways on an image of twice the output's size,
    output rows of a multiple of 8 positions (each vector the even elements of two of an
    input row's)."""
    return (ct == "float" and 256 <= target.vector_bits < 512 and
            geo["SH"] == geo["SW"] == 2 and geo["H"] == 2 * geo["OH"] and
            geo["W"] == 2 * geo["OW"] and geo["OW"] % 8 == 0)


def _tiles(geo, ct, target):
    """The template's ``tiles``: the vectors of the forward's form of stride 2 (``f`` "z",
    AVX-512's, or "y", AVX2's; ``vl`` floats a vector, ``nv`` vectors of positions a tile) and
    its tiles' output channels with the statistics and without; None where neither applies.
    AVX2's 16 registers: 6 channels x 2 vectors (12 accumulators) either way."""
    if _zmm_forward(geo, ct, target):
        return dict(f="z", vl=16, nv=_ZMM_POSITION_VECTORS, stats_mr=(4, 2, 1),
                    affine_mr=(6, 4, 2, 1))
    if _ymm_forward(geo, ct, target):
        return dict(f="y", vl=8, nv=2, stats_mr=(6, 4, 2, 1), affine_mr=(6, 4, 2, 1))
    return None


def lower_forward(name, group, geo, reads, writes, plane_out, relu_out, bn, res, stats,
                  target):
    """conv [-> eval-mode batch_norm] [-> residual add] [-> relu], or conv with the
    ``stats`` of a training-mode batch norm, without pooling: the GEMM writes the output
    planes (``plane_out``), the epilogue then runs per plane in cache."""
    conv = group[0]
    ct = ctype(conv.outputs[0])
    t = _template_geo(geo)
    has_bias = len(conv.inputs) > 2
    relu = any(m.op == "relu" for m in group)
    # a training-mode batch norm's statistics alone: summed on the register tiles
    stats_tiles = (stats is not None and not (bn or res or relu) and
                   t["P"] % _VL[ct] == 0)
    # the packed panel's rows a cache line longer than the positions where the tiles read it:
    # rows a multiple of 4 KiB apart (the output planes' too) alias in the store buffer
    line = 64 // (4 if ct == "float" else 8)
    ldx = t["P"] + (line if t["strided"] and stats_tiles else 0)
    tiles = (_tiles(geo, ct, target) if not relu_out and (stats is None or stats_tiles)
             else None)
    per_thread = geo["C"] * max(ldx, t["P"] + line if tiles else 0) if t["strided"] else 0
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    stats_at = 0 if stats is None else statistics_scratch(stats, geo["O"], ct, parallel, target)
    scratch = _scratch(per_thread, parallel, stats_at)
    src = render("conv_pointwise.c.j2", kind="forward", name=name,
                 node_lines=node_lines(group), ctype=ct, sfx=SFX[ct],
                 signature=signature(reads, writes, 1 if scratch else 0, ct),
                 parallel=parallel, per_thread=per_thread, has_bias=has_bias, bn=bn, res=res,
                 relu=relu, plane_out=plane_out, relu_out=relu_out, stats=stats,
                 stats_at=stats_at, stats_tiles=stats_tiles, LDX=ldx, tiles=tiles,
                 ZLDX=t["P"] + line,
                 epilogue=bool(has_bias or bn or res or relu or stats), **t)
    return Kernel(name, reads, writes, src, scratch, ct, flops=conv_flops(geo), parallel=parallel)


def lower_backward_input(name, node, geo, target):
    """dX[n] = W^T @ dY[n] in the strided positions of dX[n], zeros between."""
    gy, w = node.inputs
    out = node.outputs[0]
    ct = ctype(out)
    t = _template_geo(geo)
    fused = _fused_scatter(geo, ct)
    # (without vector shuffles, a fused scatter takes the packed panel too)
    per_thread = geo["C"] * t["P"] if t["strided"] else 0
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    src = render("conv_pointwise.c.j2", kind="input", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct],
                 signature=signature(reads, writes, 1 if per_thread else 0, ct),
                 parallel=parallel, per_thread=per_thread, fused_scatter=fused,
                 stream_bytes=STREAMED_GRADIENT_BYTES, **t)
    return Kernel(name, reads, writes, src, _scratch(per_thread, parallel), ct,
                  flops=conv_flops(geo), parallel=parallel)


def _gather_transposed(geo, ct):
    """Whether the weight gradient gathers the strided positions straight into the transposed
    panel (``gather_t`` in the template, where the compiler has vector shuffles): stride 2
    across an even width, whole vectors of channels and of positions per output row."""
    vl = _VL[ct]
    return (geo["SW"] == 2 and geo["W"] == 2 * geo["OW"] and geo["C"] % vl == 0 and
            geo["OW"] % vl == 0)


def _fused_scatter(geo, ct):
    """Whether the input gradient's register tiles store straight into the image gradient:
    stride 2 both ways on an image of twice the output's size (every input row and column
    pair holds one strided position) with whole vectors of positions per output row (where
    the compiler has the vector shuffles that interleave them with zeros)."""
    vl = _VL[ct]
    return (geo["SH"] == geo["SW"] == 2 and geo["H"] == 2 * geo["OH"] and
            geo["W"] == 2 * geo["OW"] and geo["OW"] % vl == 0)


def _zmm_weight(geo, ct, target):
    """The template's arguments of the weight gradient's AVX-512 form (``zgather_t`` and the
    ``zwtile`` tiles): where the forward's applies (``_zmm_forward``) and the input channels
    are whole 16-float vectors; tiles of 12 output channels x two vectors of input channels,
    or of 24 x one (24 accumulators either way)."""
    if not (_zmm_forward(geo, ct, target) and geo["C"] % 16 == 0):
        return dict(zmm_weight=False)
    two = geo["C"] % 32 == 0
    lines = (geo["O"] * geo["OH"] * geo["OW"] * 4 + 63) // 64 + \
        geo["C"] * geo["OH"] * ((geo["W"] * 4 + 63) // 64)
    return dict(zmm_weight=True, ZNVW=2 if two else 1,
                ZMR=(12, 4, 2, 1) if two else (24, 8, 4, 2, 1), ZWLINES=lines)


def lower_backward_weight(name, node, geo, target):
    """dW = sum over n of dY[n] @ Xs[n]^T: each thread adds its images' GEMMs into its own
    [O x C] buffer (Xs[n] gathered transposed), then the buffers are added into ``out``."""
    gy, x = node.inputs
    out = node.outputs[0]
    ct = ctype(out)
    t = _template_geo(geo)
    panel = geo["C"] * t["P"]
    # the transposed subsample, the packed subsample when strided, then the [O x C] sums
    work = panel * (2 if t["strided"] else 1)
    per_thread = work + geo["O"] * geo["C"]
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("x", x)], [("out", out)]
    src = render("conv_pointwise.c.j2", kind="weight", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 parallel=parallel, per_thread=per_thread, work_elems=work, panel=panel,
                 max_threads="TN_MAX_THREADS", gather_transposed=_gather_transposed(geo, ct),
                 wide_tiles=geo["C"] % (4 * _VL[ct]) == 0, **_zmm_weight(geo, ct, target),
                 **t)
    return Kernel(name, reads, writes, src, threads_scratch(per_thread, parallel), ct,
                  flops=conv_flops(geo), parallel=parallel)

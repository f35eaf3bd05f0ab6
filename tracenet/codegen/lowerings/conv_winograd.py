"""C lowerings of 3x3 stride-1 padding-1 convolutions (one group, no depth, no dilation) by
Winograd's F(2x2, 3x3): forward, input gradient and weight gradient.

Each 2x2 block of outputs comes from a 4x4 tile of the input through 16 products per channel
pair instead of 36: the weights are transformed once per call (U = G g G^T), each block of
tile rows of an image is transformed (V = B^T d B) into [16][channels][tiles], the 16
[out x in] x [in x tiles] products run on the GEMM core, and Y = A^T M A goes to the output
rows with the general kernel's fused epilogue (bias, eval-mode batch norm, residual add, relu,
a training-mode batch norm's statistics). The input gradient of such a convolution is the
same convolution of the output gradient with the kernel flipped and its channels swapped,
the same kernel with another weight transform. The weight gradient is G^T dU G, dU[e] the
sum over the tiles of the output gradient's transformed tiles (A dy A^T) times the input's,
transformed with the channels innermost (``conv_winograd_weight.c.j2``: the GEMM core's
broadcast tiles keep the sums along the tiles in registers; each thread its share of the
batch; with AVX-512 and one or two vectors of output channels on tiles of 2 x 4 output-gradient
values, F(2x4, 3x3): ``_wide_weight_tiles``). The results round
differently from the direct sum (within a few units in the last place of the inputs' scale).
In float32 the forward and the input gradient take F(4x4, 3x3) instead (``_takes_f4``): 6x6
tiles, 36 products per 4x4 outputs, the same steps (``conv_winograd_f4.c.j2``; about ten
times the rounding of F(2x2), which the weight gradient's long sums would not keep within
the tests' tolerance, so it stays F(2x2)). A block of the forward or input gradient holds
several whole images when one has fewer than ``_MIN_IMAGE_BLOCK_TILES`` tiles; in F(4x4) a
block's images are interleaved tile by tile (``_blocking_f4``), so that the transforms fill a
vector where an image row has fewer tiles than one.
``lowerings/conv.py`` hands a convolution here when ``takes_forward``,
``takes_input_gradient`` or ``takes_weight_gradient`` say so.
"""
from ..base import Kernel, SFX, ctype, node_lines, signature, threads_scratch
from ..templates import render
from .conv_flops import conv_flops
from .normalization import statistics_scratch

# Input and output channels, and positions per image, from which the Winograd form is taken:
# below, the transforms cost more than the products they save (one thread, interleaved,
# inference and forward + backward against the general kernel: 8 channels on 32x32 1.14x and
# 1.07x, on 16x16 1.17x and 1.11x, on 8x8 0.98x and 1.08x; 4 channels on 32x32 0.79x and
# 0.85x; 64 channels on 8x8 1.19x, on 7x7 0.95x and 1.07x, on 6x6 0.64x and 0.86x)
_MIN_CHANNELS = 8
_MIN_POSITIONS = 64
# A block of tile rows keeps about this many [channels x tiles] elements per transformed
# matrix (and at least one vector of tiles), so that the transformed tiles and products stay
# in the first-level cache (the ResNet's 3x3 convolutions, one thread: 1.1-1.3x faster than
# with 2048 or 4096, and than 256, whose GEMMs are too narrow)
_BLOCK_ELEMENTS = 512
_MIN_BLOCK_TILES = 8
# Images with fewer tiles share a block with the next ones, so the GEMMs have this many
# columns (64 channels on 8x8, one thread: 1.20x in F(2x2) against one image per block)
_MIN_IMAGE_BLOCK_TILES = 32
# (F(4x4): 256, 1024 and 2048 measured 0.94-1.03x against 512 for the ResNet's shapes)
_F4_BLOCK_ELEMENTS = 512
# The weight gradient's blocks: the whole image for the ResNet's sizes (one thread, against
# 1024 and 2048 elements: 16 channels on 32x32 1.02-1.07x, 32 on 16x16 1.00-1.06x)
_WEIGHT_BLOCK_ELEMENTS = 8192
# Images with fewer tiles share a weight gradient's block with the next ones, so that the sums
# along the tiles are long (64 channels on 8x8, one thread: 1.13x against one image per block,
# 1.05x against 32 tiles, 1.02x against 64)
_WEIGHT_IMAGE_BLOCK_TILES = 128
# (channels the weight gradient was measured on: the ResNet's)
_WEIGHT_MIN_CHANNELS = 16
# Channel pairs the weight gradient's last step (the threads' sums, G^T dU G) takes at a time,
# along the vectors
_WEIGHT_REDUCE_BLOCK = 16


def applies(geo, ct):
    """Whether a convolution of geometry ``geo`` (``conv.py``'s 3-d form) has the shape this
    module lowers: 2-d (or 1-d height) 3x3, stride 1, padding 1, no dilation, one group, the
    output the input's size, with at least ``_MIN_CHANNELS`` channels in and out and
    ``_MIN_POSITIONS`` positions per image."""
    return (ct in SFX and geo["G"] == 1 and not geo["deep"] and geo["KD"] == 1 and
            geo["KH"] == geo["KW"] == 3 and geo["SH"] == geo["SW"] == 1 and
            geo["PH"] == geo["PW"] == 1 and geo["DH"] == geo["DW"] == 1 and
            geo["OH"] == geo["H"] and geo["OW"] == geo["W"] and
            geo["C"] >= _MIN_CHANNELS and geo["O"] >= _MIN_CHANNELS and
            geo["H"] * geo["W"] >= _MIN_POSITIONS)


def takes_forward(geo, ct, target):
    return applies(geo, ct)


def takes_input_gradient(geo, ct, target):
    return applies(geo, ct)


def takes_weight_gradient(geo, ct, target):
    """From ``_WEIGHT_MIN_CHANNELS`` in and out, with AVX-512 or AVX2 only (the ResNet's
    16-channel 32x32 kernels with AVX2 only, batch 32, one thread: 2124-2133 us in the general
    kernel, 1056-1065 us here; the dot products along the tiles before lost there, 0.91-0.93x,
    and were taken from 32 channels); and with few input channels (``_few_channels_weight``)."""
    return ((applies(geo, ct) and min(geo["C"], geo["O"]) >= _WEIGHT_MIN_CHANNELS) or
            _few_channels_weight(geo, ct, target))


# The few-channel weight gradient: up to this many input channels (8 of the 16 points x 3
# channels are 24 register accumulators of AVX-512's 32) and whole 64-byte vectors of output
# channels
_FEW_MAX_CHANNELS = 3
# float32 lanes of a 64-byte vector: the weight gradient's AVX-512 forms take whole vectors of
# output channels
_ZMM_FLOATS = 16


def _few_channels_weight(geo, ct, target):
    """Whether the weight gradient takes ``conv_winograd_weight_few.c.j2``: float32 with
    AVX-512, 3x3 stride 1 padding 1, up to ``_FEW_MAX_CHANNELS`` channels in, whole vectors of
    channels out, even sizes (the ResNet's stem on rows that are not whole vectors: on whole
    vectors ``conv.py`` takes its direct few-channel form first)."""
    return (ct == "float" and target.vector_bits >= 512 and geo["G"] == 1 and not geo["deep"]
            and geo["KD"] == 1 and geo["KH"] == geo["KW"] == 3 and
            geo["SH"] == geo["SW"] == 1 and geo["PH"] == geo["PW"] == 1 and
            geo["DH"] == geo["DW"] == 1 and geo["OH"] == geo["H"] and geo["OW"] == geo["W"] and
            geo["H"] % 2 == 0 and geo["W"] % 2 == 0 and geo["C"] <= _FEW_MAX_CHANNELS and
            geo["O"] % _ZMM_FLOATS == 0)


# Elements between the transformed matrices beyond their size (a cache line of floats)
_PAD = 16
_VL = {"float": 8, "double": 4}  # elements per vector of the GEMM core (32 bytes)


def _blocking(ci, h, w, budget=_BLOCK_ELEMENTS, images=False, m=2,
              image_tiles=_MIN_IMAGE_BLOCK_TILES):
    """Tiles (of m x m outputs) per side, tile rows per block (R), images per block (IMGS:
    several when ``images`` and a whole image is fewer than ``image_tiles`` tiles) and tiles
    per block (RB)."""
    th, tw = -(-h // m), -(-w // m)
    r = min(th, max(1, budget // (ci * tw), -(-_MIN_BLOCK_TILES // tw)))
    imgs = 1
    if images and th * tw < image_tiles:
        r, imgs = th, -(-image_tiles // (th * tw))
    return dict(TH=th, TW=tw, R=r, IMGS=imgs, RB=imgs * r * tw)


def _strides(ci, co, rb):
    """The distances between the 16 transformed matrices of V ([ci][rb]), M ([co][rb]) and
    U ([co][ci]): each padded by a cache line, since a power-of-two distance puts the 16
    streams the transforms read or write in the same first-level cache sets."""
    return dict(VS=ci * rb + _PAD, MS=co * rb + _PAD, US=co * ci + _PAD)


def _split(ci, blocks):
    """Elements of a block's input rows split into even and odd columns."""
    return ci * (2 * blocks["R"] + 2) * 2 * (blocks["TW"] + 1)


def _scratch(ci, co, blocks, parallel, shared_before):
    """Per-thread work (the split input rows, V, M, a two-row buffer) and the shared
    elements (``shared_before``, then U)."""
    st = _strides(ci, co, blocks["RB"])
    per_thread = _split(ci, blocks) + 16 * (st["VS"] + st["MS"]) + 4 * blocks["TW"]
    shared = shared_before + 16 * st["US"]
    return per_thread, shared, threads_scratch(per_thread, parallel, shared)


def _render(kind, name, nodes, ct, reads, writes, geo, ci, co, parallel, stats_at, target,
            **extra):
    if _takes_f4(geo, ct):
        return _render_f4(kind, name, nodes, ct, reads, writes, geo, ci, co, parallel,
                          stats_at, target, **extra)
    blocks = _blocking(ci, geo["H"], geo["W"], images=True)
    per_thread, shared, scratch = _scratch(ci, co, blocks, parallel, stats_at)
    src = render("conv_winograd.c.j2", kind=kind, name=name, node_lines=node_lines(nodes),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 parallel=parallel, per_thread=per_thread, shared=shared, u_at=stats_at,
                 N=geo["N"], CI=ci, CO=co, H=geo["H"], W=geo["W"], P=geo["H"] * geo["W"],
                 SPLIT=_split(ci, blocks), WE=blocks["TW"] + 1, ROWS=2 * blocks["R"] + 2,
                 VL=_VL[ct], **_strides(ci, co, blocks["RB"]), **blocks, **extra)
    return Kernel(name, reads, writes, src, scratch, ct, flops=conv_flops(geo), parallel=parallel)


def _takes_f4(geo, ct):
    """Whether the forward and input gradient take F(4x4, 3x3): in float32, every shape
    ``applies`` takes (against F(2x2), one thread, interleaved, inference: 16 channels on
    32x32 1.34x, 32 on 16x16 1.31x, 64 on 8x8 1.25x, 8 on 8x8 1.07x, 8 on 32x32 1.20x,
    64 on 7x7 1.01x, 128 on 8x8 1.36x); float64 keeps F(2x2) (not measured with F(4x4))."""
    return ct == "float"


def _blocking_f4(ci, h, w, n, ct, m=4):
    """F(4x4)'s blocks (and, with ``m`` 2, those of the stride-2 forward's tiles of 2x2
    outputs, ``conv_winograd_s2.py``): tiles per side, images per block (J), tiles per row of
    a block (L = TW J, the images' tiles interleaved), tile rows per block (R) and tiles per
    block (RB). J images fill a 32-byte vector along a row's tiles (not AVX-512's 64 bytes: 16
    floats cost the ResNet's 32x32 and 16x16 kernels 0.88-0.91x and 0.93-0.96x in
    interleaving, one thread), more when an image has fewer than ``_MIN_IMAGE_BLOCK_TILES``
    tiles, none beyond a known batch ``n``; R keeps about ``_F4_BLOCK_ELEMENTS`` per
    transformed matrix and ``_MIN_IMAGE_BLOCK_TILES`` columns for the GEMMs."""
    th, tw = -(-h // m), -(-w // m)
    imgs = max(1, _VL[ct] // tw, -(-_MIN_IMAGE_BLOCK_TILES // (th * tw)))
    if isinstance(n, int):
        imgs = min(imgs, n)
    row = imgs * tw
    r = min(th, max(1, _F4_BLOCK_ELEMENTS // (ci * row), -(-_MIN_IMAGE_BLOCK_TILES // row)))
    return dict(TH=th, TW=tw, J=imgs, L=row, R=r, RB=r * row)


def _f4_tiles(co, rb):
    """F(4x4)'s AVX-512 product tiles: TNV vectors of 16 tiles (two where a block has 32 tiles,
    the ResNet's) x TMR output channels, within 24 of the 32 registers; TMR 0 (the GEMM core
    alone) when a block has fewer than 16 tiles or fewer output channels than a tile."""
    nv = min(2, rb // 16)
    mr = {0: 0, 1: 16, 2: 8}[nv]
    return dict(TNV=nv, TMR=mr if co >= mr else 0)


# float32 values a 64-byte cache line holds
_LINE_FLOATS = 16


def _split_stride_f4(blocks):
    """Values a phase of a split input row takes (WE): a tile row's TW + 2 columns, on one
    image a block rounded up to whole 64-byte lines, so that the input transform's loads (a
    vector from columns k .. k + 2 of a phase) do not cross a line where the work memory starts
    on one (the ResNet's 16 channels on 32x32, one thread, C harness of the step's kernels,
    interleaved, best of 30 calls, 8 rounds: input gradient 435 -> 424 us, with AVX2 only 670
    -> 644 us; the forward with the statistics unchanged, 438 and 662 us). Not on several
    images a block: two 16x16 images with AVX2 only took 551 -> 563 us (forward) and 530 ->
    541 us (input gradient) with 8 values a phase instead of 6."""
    we = blocks["TW"] + 2
    if blocks["J"] == 1:
        we = -(-we // _LINE_FLOATS) * _LINE_FLOATS
    return we


# Values per 3x3 kernel: the F(4x4) weight transform reads a chunk of a 64-byte vector of
# kernels as this many vectors, one per tap
_TAPS = 9


def _taps_form(ct, ci, kind):
    """How the F(4x4) weight transform reads a chunk's 16 kernels tap by tap with AVX-512
    (``conv_winograd_f4.c.j2``'s ``taps``): "shuffles" in the forward, whose chunk is 144
    contiguous values (``_tap_shuffles``), "gathers" in the input gradient, whose kernels are
    CO x 9 values apart; None where the chunks are not whole vectors of float32 channels (a
    value at a time, as without AVX-512). U is the same bit for bit either way."""
    if ct != "float" or ci % _ZMM_FLOATS:
        return None
    return "shuffles" if kind == "forward" else "gathers"


def _tap_shuffles():
    """The shuffles by which the F(4x4) forward's weight transform turns a chunk's 16 kernels
    (vectors z0 .. z8 of 144 contiguous values) into a vector per tap: tap t of kernel j is
    value 9 j + t. Per tap: a shuffle of each pair (z0 z1) .. (z6 z7) into the lanes whose
    values it holds, three blends of those, a shuffle taking the rest from z8. A list per tap
    of the index lists: ``pairs`` (4), ``blends`` (3), ``last``."""
    lanes, pair_values = range(_ZMM_FLOATS), 2 * _ZMM_FLOATS
    out = []
    for t in range(_TAPS):
        at = [_TAPS * j + t for j in lanes]

        def from_pair(k):
            return [a - pair_values * k if 0 <= a - pair_values * k < pair_values else 0
                    for a in at]

        def blend(below):
            return [j if at[j] < below else _ZMM_FLOATS + j for j in lanes]

        last = 4 * pair_values
        out.append(dict(pairs=[from_pair(k) for k in range(4)],
                        blends=[blend(pair_values), blend(3 * pair_values),
                                blend(2 * pair_values)],
                        last=[j if at[j] < last else _ZMM_FLOATS + at[j] - last
                              for j in lanes]))
    return out


def transformed_weights_f4(co, ci):
    """How many values an F(4x4) kernel's transformed weights U take (36 matrices CO x CI)."""
    return 36 * (co * ci + _PAD)


def private_transforms_f4(shape, target):
    """Whether the F(4x4) kernels of a convolution with weights of ``shape`` (3x3) make their
    transformed weights in each thread, reading all of the weights on every core, when they
    split their work."""
    return (len(shape) == 4 and tuple(shape[2:]) == (3, 3) and
            target.parallel.private_weights(transformed_weights_f4(shape[0], shape[1]), True))


def _render_f4(kind, name, nodes, ct, reads, writes, geo, ci, co, parallel, stats_at, target,
               **extra):
    blocks = _blocking_f4(ci, geo["H"], geo["W"], geo["N"], ct)
    we, rows = _split_stride_f4(blocks), 4 * blocks["R"] + 2
    split = rows * 4 * we * blocks["J"]
    st = _strides(ci, co, blocks["RB"])
    per_thread = split + 36 * (st["VS"] + st["MS"]) + 16 * blocks["L"]
    u_in_thread = per_thread
    # each thread its own U (36 matrices CO x CI) or a half each of one shared U
    u_values = transformed_weights_f4(co, ci)  # (36 * st["US"])
    private_u = target.parallel.private_weights(u_values, parallel)
    if private_u:
        per_thread += u_values
        shared = stats_at
    else:
        shared = stats_at + u_values
    scratch = threads_scratch(per_thread, parallel, shared)
    src = render("conv_winograd_f4.c.j2", kind=kind, name=name, node_lines=node_lines(nodes),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 parallel=parallel, per_thread=per_thread, shared=shared, u_at=stats_at,
                 private_u=private_u, u_in_thread=u_in_thread,
                 taps=_taps_form(ct, ci, kind), tap_shuffles=_tap_shuffles(),
                 N=geo["N"], CI=ci, CO=co, H=geo["H"], W=geo["W"], P=geo["H"] * geo["W"],
                 SPLIT=split, WE=we, ROWS=rows, VL=_VL[ct], **st, **blocks,
                 **_f4_tiles(co, blocks["RB"]), **extra)
    return Kernel(name, reads, writes, src, scratch, ct, flops=conv_flops(geo), parallel=parallel)


def lower_forward(name, group, geo, reads, writes, plane_out, relu_out, bn, res, stats,
                  target):
    """conv [-> eval-mode batch_norm] [-> residual add] [-> relu], or conv with the
    ``stats`` of a training-mode batch norm, without pooling."""
    conv = group[0]
    ct = ctype(conv.outputs[0])
    has_bias = len(conv.inputs) > 2
    relu = any(m.op == "relu" for m in group)
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    stats_at = 0 if stats is None else statistics_scratch(stats, geo["O"], ct, parallel, target)
    epilogue = bool(has_bias or bn or res or relu)
    notes = notes_finite(stats)
    return noting_finite(_render("forward", name, group, ct, reads, writes, geo, geo["C"],
                                 geo["O"], parallel, stats_at, target, has_bias=has_bias, bn=bn,
                                 res=res, relu=relu, plane_out=plane_out, relu_out=relu_out,
                                 stats=stats, epilogue=epilogue, finite_notes=notes),
                         notes)


def notes_finite(stats):
    """Whether a Winograd forward notes its values in registers (``_finite_check.c.j2``'s
    ``note``): unless a training batch norm's means, which it writes, tell at no cost
    (``conv_nonfinite.py``)."""
    return stats is None or not stats["mean_out"]


def noting_finite(kernel, note):
    """``kernel``, which notes in registers whether a value its output transforms made was not
    finite when ``note`` (``_finite_check.c.j2``'s ``note``: in the int ahead of its scratch,
    which ``conv_nonfinite.checked`` reserves): ``finite_flag`` True, else False."""
    kernel.finite_flag = bool(note)
    return kernel


def _wide_tiles(ci, co, ct):
    """The weight gradient's AVX-512 register tiles: NV vectors of ZL channels in (all of a
    row's up to four) x MR output channels, within 24 of the 32 registers; MR 0 (the GEMM
    core alone) when fewer than a vector of channels or MR rows."""
    zl = 64 // (4 if ct == "float" else 8)
    nv = min(4, ci // zl)
    mr = {0: 0, 1: 16, 2: 12, 3: 8, 4: 6}[nv]
    return dict(ZL=zl, NV=nv, MR=mr if co >= mr else 0)


# The weight gradient's fused products for up to this many 64-byte vectors of output channels
# (each vector's passes read the transposed output gradient again: one thread, interleaved in
# one process, 16 channels on 32x32 1.05-1.08x, 32 on 16x16 0.99-1.07x, 64 on 8x8 0.94-0.99x)
_FUSED_MAX_OUT_VECTORS = 2


def _fused_products(co, ct, target):
    """Whether the weight gradient makes A dy A^T in registers inside its products
    (``conv_winograd_weight.c.j2``'s ``wide_pass``): float32 with AVX-512, one or two whole
    64-byte vectors of output channels."""
    return (ct == "float" and target.vector_bits >= 512 and co % _ZMM_FLOATS == 0 and
            co // _ZMM_FLOATS <= _FUSED_MAX_OUT_VECTORS)


# The weight gradient's tiles of 2 x 4 output-gradient values (F(2x4, 3x3): 4 x 6 input
# values, 24 products per 8 positions against F(2x2)'s 16 per 4), where the products are fused:
# input channels a pass (3 of the 6 column points x 8 channels, 24 of AVX-512's 32 registers)
_WIDE_TILE_CHANNELS = 8
# ... and tiles summed in registers before the sums go to memory: one long float32 run per
# thread rounds F(2x4)'s larger transformed values past the tests' tolerance (see
# docs/performance-log.md)
_WEIGHT_SUM_TILES = 64


def _wide_weight_tiles(co, ct, target):
    """Whether the weight gradient takes tiles of 2 x 4 output-gradient values: where its
    products are fused (``_fused_products``)."""
    return _fused_products(co, ct, target)


def _sum_rows(blocks):
    """Rows of tiles a run of F(2x4)'s sums in registers takes (``_WEIGHT_SUM_TILES`` tiles)."""
    return max(1, _WEIGHT_SUM_TILES // blocks["TW"])


def _weight_layout(ci, co, blocks, ct, mw=2):
    """The weight gradient's per-thread work for tiles of 2 x ``mw`` output-gradient values:
    the input rows with the channels innermost (XT elements, CIP channels a position, WX
    positions a row), a row of zeros (ZEROS), V and D (VS and MS apart, NE points), the sums
    dU (at ``du_at``, US apart), then F(2x4)'s column points of a pass for a run's tiles (DT:
    3 vectors of output channels a tile)."""
    cip = -(-ci // _VL[ct]) * _VL[ct]
    ne = 4 * (mw + 2)
    wr = mw * blocks["TW"]  # a row's output-gradient columns, whole tiles
    wx, xrows = wr + 2, 2 * blocks["R"] + 2
    layout = dict(CIP=cip, WX=wx, WR=wr, XROWS=xrows, XT=xrows * wx * cip, ZEROS=wr,
                  MW=mw, NE=ne,
                  VS=blocks["RB"] * cip + _PAD, MS=co * blocks["RB"] + _PAD, US=co * ci + _PAD)
    layout["du_at"] = layout["XT"] + layout["ZEROS"] + ne * (layout["VS"] + layout["MS"])
    run_tiles = min(_sum_rows(blocks), blocks["IMGS"] * blocks["R"]) * blocks["TW"]
    layout["DT"] = 3 * _ZMM_FLOATS * run_tiles if mw == 4 else 0
    layout["per_thread"] = layout["du_at"] + ne * layout["US"] + layout["DT"]
    return layout


def _lower_few_channels_weight(name, node, geo, target):
    """The weight gradient with few input channels: per image the output gradient transposed,
    V = B^T d B along the tiles, dU[e] += (A dy A^T)[e] V[e] on register accumulators of 16
    output channels, each thread its images (``conv_winograd_weight_few.c.j2``)."""
    gy, x = node.inputs
    out = node.outputs[0]
    ci, co, h, w = geo["C"], geo["O"], geo["H"], geo["W"]
    tiles = (h // 2) * (w // 2)
    split = ci * (h + 2) * 2 * (w // 2 + 1)
    du_at = h * w * co + split + 16 * ci * tiles
    per_thread = du_at + 16 * ci * co
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("x", x)], [("out", out)]
    src = render("conv_winograd_weight_few.c.j2", name=name, node_lines=node_lines([node]),
                 sfx=SFX["float"], signature=signature(reads, writes, 1, "float"),
                 parallel=parallel, N=geo["N"], CI=ci, CO=co, H=h, W=w, P=h * w,
                 TH=h // 2, TW=w // 2, TILES=tiles, SPLIT=split, du_at=du_at,
                 per_thread=per_thread)
    return Kernel(name, reads, writes, src, threads_scratch(per_thread, parallel), "float",
                  flops=conv_flops(geo), parallel=parallel)


def lower_backward_weight(name, node, geo, target):
    """dW = G^T dU G, dU[e] the sum over the tiles of the output gradient's A dy A^T times
    the input's B^T d B: each thread adds its images' GEMMs into its own buffer, then the
    buffers are added (``conv_winograd_weight.c.j2``)."""
    gy, x = node.inputs
    out = node.outputs[0]
    ct = ctype(out)
    if _few_channels_weight(geo, ct, target):
        return _lower_few_channels_weight(name, node, geo, target)
    ci, co = geo["C"], geo["O"]
    mw = 4 if _wide_weight_tiles(co, ct, target) else 2
    # (tiles of 2 x mw: _blocking's 2 x 2 tiles on a width of 2 tiles per mw columns)
    blocks = _blocking(ci, geo["H"], 2 * -(-geo["W"] // mw), _WEIGHT_BLOCK_ELEMENTS,
                       images=True, image_tiles=_WEIGHT_IMAGE_BLOCK_TILES)
    layout = _weight_layout(ci, co, blocks, ct, mw)
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("x", x)], [("out", out)]
    src = render("conv_winograd_weight.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 parallel=parallel, N=geo["N"], CI=ci, CO=co, H=geo["H"], W=geo["W"],
                 P=geo["H"] * geo["W"], VL=_VL[ct], RBLK=_WEIGHT_REDUCE_BLOCK, **layout,
                 **blocks, **_wide_tiles(ci, co, ct), FUSED=_fused_products(co, ct, target),
                 CB=_WIDE_TILE_CHANNELS,
                 SUMROWS=_sum_rows(blocks))
    return Kernel(name, reads, writes, src, threads_scratch(layout["per_thread"], parallel), ct,
                  flops=conv_flops(geo), parallel=parallel)


def lower_backward_input(name, node, geo, target):
    """dX = the output gradient convolved with the flipped kernel, channels swapped."""
    gy, w = node.inputs
    out = node.outputs[0]
    ct = ctype(out)
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    return noting_finite(_render("input", name, [node], ct, reads, writes, geo, geo["O"],
                                 geo["C"], parallel, 0, target, stats=None, bn=None, res=False,
                                 relu=False, relu_out=None, has_bias=False, epilogue=False,
                                 finite_notes=True), True)

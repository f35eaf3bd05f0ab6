"""C lowerings of the forward and input gradient of 2-d 3x3 convolutions of stride 2 and
padding 1 (one group, no dilation: the ResNet's downsampling convolutions) by Winograd forms of
their phases.

Along one dim, two outputs of stride 2 read five inputs x0..x4 (from 2 o - 1): y0 = w0 x0 +
w1 x1 + w2 x2, y1 = w0 x2 + w1 x3 + w2 x4. The even inputs meet the taps w0, w2 as a stride-1
2-tap convolution, whose F(2, 2) takes three products ((x0 - x2) w0, x2 (w0 + w2),
(x4 - x2) w2), and the odd ones meet w1 alone (x1 w1, x3 w1): five products for two outputs
against six. In 2-d, 5 x 5 = 25 products per 2x2 outputs against 36: F(2x2, 2x2) on the
2x2-tap phase, F(2, 2) on the two 2-tap phases, the 1-tap phase as it is. The transforms'
coefficients are 0 and +-1, so the result rounds about as the direct sum does.

The forward (``conv_winograd_s2.c.j2``) has the F(4x4, 3x3) kernel's steps: each 5x5 input
tile (stride 4) transformed into V = B^T d B, products M = U V with U = G g G^T, and
Y = A^T M A stored with the fused epilogue. The input gradient
(``conv_winograd_s2_input.c.j2``) is the same along one dim read backwards: four image-gradient
values 4 t .. 4 t + 3 take the output gradient's three values 2 t .. 2 t + 2 through five
products (the odd ones F(2, 2) of taps w2, w0, the even ones w1 alone), so 3x3 tiles of the
output gradient (2 apart) give 4x4 tiles of the image gradient, every value written once. In
both, the points of the taps w1 share their weights, so the 25 products are 16 GEMMs of 1, 2
or 4 blocks of tiles side by side.

Both have a larger form (``_forward_tile``, ``_input_tile``) on whole tiles: the forward's
tiles of 4x4 outputs take F(4, 2) on the nine even inputs' five, 81 products per 4x4 outputs;
the input gradient's 8x8 values take five output-gradient values per dim (4 apart), the four
odd values dx 2 j + 1 = w2 dy j + w0 dy j+1 the forward's F(4, 2) of taps w0, w2 on the five
read backwards (the same weight transforms), the four even ones w1 dy j alone: 81 products
per 8x8 values against 100. Their 36 GEMMs group the points alike.
``lowerings/conv.py`` hands a convolution here when ``takes_forward`` or
``takes_input_gradient`` say so.

The input gradient of tiles of 8x8 values also takes a 1x1 stride-2 shortcut's input gradient
summed with it (``passes/conv_shapes.folds_shortcut``, the ``shortcut_input_gradient`` group of
``passes/fusion.py``, lowered in ``conv_pointwise_sum.py``): the shortcut's product
W_s^T dy_s lands on the even image-gradient rows and columns, which are the points of w1 in
both dims taken as they are, so dy_s joins their GEMM as more rows of V and W_s^T joins w1's
transform as more columns: no pass over the image gradient adds it, and the relu's mask after
the sum is applied as the values are stored. The forward likewise takes a 1x1 stride-2
shortcut of the same input (``short``, the ``downsample_forward`` group lowered in
``conv_downsample_forward.py``): its outputs are its weights times the V of the even-even
points (w1 in both dims, x as it is), a chunk of channels at a time.
"""
from ..base import Kernel, SFX, ctype, node_lines, signature, threads_scratch
from ..templates import render
from .conv_flops import conv_flops
from .conv_winograd import _F4_BLOCK_ELEMENTS, _MIN_IMAGE_BLOCK_TILES, _PAD, _VL, _blocking_f4, \
    _f4_tiles, notes_finite, noting_finite
from .normalization import statistics_scratch
from ...passes.conv_shapes import enough_channels, input_tile

# Per tile side of m outputs (2: F(2, 2) on the even inputs, 4: F(4, 2)), which distinct
# weight transform along one dim each of the 2 m + 1 points of a transformed tile takes: the
# even inputs' m + 1 points one each (G's rows), the odd inputs' m points all w1 (the input
# gradient's tiles of 2 m values alike: the odd values' m + 1 points, the even ones' m)
_POINT_WEIGHTS = {2: (0, 1, 2, 3, 3), 4: (0, 1, 2, 3, 4, 5, 5, 5, 5)}


def _distinct(m):
    return max(_POINT_WEIGHTS[m]) + 1




def takes_forward(geo, ct, target):
    """2-d (or 1-d height) 3x3, stride 2, padding 1, no dilation, one group, from
    ``MIN_CHANNEL_PAIRS`` channel pairs (``passes/conv_shapes.py``)."""
    return (ct in SFX and geo["G"] == 1 and not geo["deep"] and geo["KD"] == 1 and
            geo["KH"] == geo["KW"] == 3 and geo["SH"] == geo["SW"] == 2 and
            geo["PH"] == geo["PW"] == 1 and geo["DH"] == geo["DW"] == 1 and
            enough_channels(geo["C"], geo["O"]))


def _groups(ci, co, rb, m=2):
    """The GEMMs (16 for tiles of 2x2 outputs, 36 for 4x4): per pair of distinct weight
    transforms (gu, gv), the points (a, b) that take it side by side (``k`` blocks of RB
    tiles), with where its V ([ci][k RB]) and M ([co][k RB]) start; and per point, its V and
    M offsets and row length."""
    weights, distinct = _POINT_WEIGHTS[m], _distinct(m)
    groups, points, v_at, m_at = [], {}, 0, 0
    for gu in range(distinct):
        for gv in range(distinct):
            members = [(a, b) for a in range(len(weights)) for b in range(len(weights))
                       if (weights[a], weights[b]) == (gu, gv)]
            ld = len(members) * rb
            groups.append(dict(u=gu * distinct + gv, k=len(members), v=v_at, m=m_at, ld=ld))
            for s, ab in enumerate(members):
                points[ab] = dict(v=v_at + s * rb, m=m_at + s * rb, ld=ld)
            v_at += ci * ld + _PAD
            m_at += co * ld + _PAD
    return groups, points, v_at, m_at


def _tiles(co, rb, ct):
    """The products' AVX-512 tiles: F(4x4)'s (``conv_winograd._f4_tiles``: vectors of 16
    floats) in float32; float64 keeps the GEMM core."""
    return _f4_tiles(co, rb) if ct == "float" else dict(TNV=0, TMR=0)


def _forward_tile(geo):
    """Outputs per tile side of the forward: 4 (F(4, 2) on the even inputs: 81 products per
    4x4 outputs against 25 per 2x2) on whole tiles, where it was measured (one thread, C
    harness of the ResNet's step, best of 60 calls, interleaved: 16 -> 32 on 32x32 708 ->
    587 us, 32 -> 64 on 16x16 631 -> 518 us), else 2 (cut tiles would waste more)."""
    return 4 if geo["OH"] % 4 == 0 and geo["OW"] % 4 == 0 else 2


def lower_forward(name, group, geo, reads, writes, plane_out, relu_out, bn, res, stats,
                  target, short=None):
    """conv [-> eval-mode batch_norm] [-> residual add] [-> relu], or conv with the
    ``stats`` of a training-mode batch norm, without pooling. ``short``: a 1x1 stride-2
    shortcut of the same input computed beside it (``conv_downsample_forward.py``: its
    ``CO``, ``bn``, ``stats``, ``has_bias``, ``flops``)."""
    conv = group[0]
    ct = ctype(conv.outputs[0])
    ci, co = geo["C"], geo["O"]
    flops = conv_flops(geo) + (short["flops"] if short else 0)
    parallel = target.parallel.compute(flops, geo["N"])
    stats_at = 0 if stats is None else statistics_scratch(stats, co, ct, parallel, target)
    m = _forward_tile(geo)
    blocks = _blocking_f4(ci, geo["OH"], geo["OW"], geo["N"], ct, m=m)
    groups, points, v_size, m_size = _groups(ci, co, blocks["RB"], m)
    we, rows = blocks["TW"] + 1, 2 * m * blocks["R"] + 1
    split = rows * 2 * m * we * blocks["J"]
    us = co * ci + _PAD
    tiles = _tiles(co, blocks["RB"], ct)
    chunk = 0
    if short:
        stats_at, chunk = _pair_shortcut(short, groups, ct, parallel, target, stats_at, tiles)
    per_thread = split + v_size + m_size + m * m * blocks["L"] * blocks["R"] + chunk
    # each thread its own U (after its work memory) or a half each of one shared U
    u_values, u_in_thread = _distinct(m) ** 2 * us, per_thread
    private_u = target.parallel.private_weights(u_values, parallel)
    if private_u:
        per_thread, shared = per_thread + u_values, stats_at
    else:
        shared = stats_at + u_values
    has_bias = len(conv.inputs) > 2
    relu = any(m.op == "relu" for m in group)
    epilogue = bool(has_bias or bn or res or relu)
    notes = notes_finite(stats)
    src = render("conv_winograd_s2.c.j2", name=name, node_lines=node_lines(group),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 parallel=parallel, per_thread=per_thread, shared=shared, u_at=stats_at,
                 private_u=private_u, u_in_thread=u_in_thread,
                 N=geo["N"], CI=ci, CO=co, XH=geo["H"], XW=geo["W"], XP=geo["H"] * geo["W"],
                 H=geo["OH"], W=geo["OW"], P=geo["OH"] * geo["OW"], SPLIT=split, WE=we,
                 ROWS=rows, VL=_VL[ct], US=us, V_SIZE=v_size, M_SIZE=m_size, groups=groups,
                 points=points, MT=m, DIST=_distinct(m), has_bias=has_bias, bn=bn, res=res,
                 relu=relu, plane_out=plane_out, relu_out=relu_out, stats=stats,
                 epilogue=epilogue, finite_notes=notes,
                 short=short, **blocks, **tiles)
    return noting_finite(Kernel(name, reads, writes, src,
                                threads_scratch(per_thread, parallel, shared), ct,
                                flops=flops, parallel=parallel), notes)


def _pair_shortcut(short, groups, ct, parallel, target, stats_at, tiles):
    """Where the shortcut's products go: its weights' rows in chunks of ``SC`` (a product
    tile's rows, ``tiles``' TMR, or 8) times the even-even points' V (the last group: w1 in
    both dims, ``center``) into a per-thread chunk of M's rows, read back from the first-level
    cache into its outputs (rows of the 3x3's M, read after all of the 3x3's, cost the
    ResNet's 16 -> 32 inference kernel 526 us against 502 us of the two kernels, one thread);
    its statistics' sums after the 3x3's (at ``short["stats_at"]``). Returns where the
    weight transforms start and the chunk's elements."""
    short["center"], short["SC"] = groups[-1], min(short["CO"], tiles["TMR"] or 8)
    short["stats_at"] = stats_at
    if short["stats"] is not None:
        stats_at += statistics_scratch(short["stats"], short["CO"], ct, parallel, target)
    return stats_at, short["SC"] * groups[-1]["ld"]


def takes_input_gradient(geo, ct, target):
    return takes_forward(geo, ct, target)


def _input_blocking(co, h, w):
    """The input gradient's blocks: tiles of 4x4 image-gradient values per side, tile rows per
    block (R), whole images per block (IMGS: several when one has fewer than
    ``_MIN_IMAGE_BLOCK_TILES`` tiles) and tiles per block (RB), at least that many tiles for
    the GEMMs and about ``_F4_BLOCK_ELEMENTS`` elements per transformed matrix."""
    th, tw = -(-h // 4), -(-w // 4)
    r = min(th, max(1, _F4_BLOCK_ELEMENTS // (co * tw), -(-_MIN_IMAGE_BLOCK_TILES // tw)))
    imgs = 1
    if th * tw < _MIN_IMAGE_BLOCK_TILES:
        r, imgs = th, -(-_MIN_IMAGE_BLOCK_TILES // (th * tw))
    return dict(TH=th, TW=tw, R=r, IMGS=imgs, RB=imgs * r * tw)


def _input_tile(geo):
    return input_tile(geo["H"], geo["W"])


def lower_backward_input(name, node, geo, target, fold=None):
    """dX from the output gradient's tiles through the products of ``_input_tile``'s form
    (``conv_winograd_s2_input.c.j2``). ``fold``: a shortcut's input gradient and a mask
    (``folds_shortcut``; what ``_fold_shortcut`` reads)."""
    if _input_tile(geo) == 8:
        return _lower_backward_input_8(name, node, geo, target, fold)
    assert fold is None, "a shortcut folds only into the tiles of 8x8 values"
    return _lower_backward_input_4(name, node, geo, target)


def _fold_shortcut(fold, groups, v_size, shared, ci, co):
    """The even-even points' GEMM (the last group: w1 in both dims) with the shortcut's CIS
    channels of output gradient as more rows of V and its weights beside w1's transform (UF,
    [co][ci + CIS], after the transforms in the shared scratch): the sizes of V and of the
    shared scratch."""
    last, cis = groups[-1], fold["SUM"]["CIS"]
    groups[-1] = dict(last, depth=ci + cis, weights="UF")
    return v_size + cis * last["ld"], shared + co * (ci + cis) + _PAD


def _render_input(name, node, geo, target, m, blocks, split, buffer, fold=None):
    """The input-gradient kernel of tiles of 2 m image-gradient values per side, ``blocks``
    its blocking, ``split`` and ``buffer`` the sizes of its split rows and row buffer.
    ``fold``: the shortcut's input gradient and mask folded in (its ``nodes``, ``reads``,
    ``writes``, ``flops``, and the template's ``SUM`` and ``masked``)."""
    gy, w = node.inputs
    out = node.outputs[0]
    ct = ctype(out)
    ci, co = geo["O"], geo["C"]  # the GEMMs' depth: the output gradient's channels
    flops = conv_flops(geo) + (fold["flops"] if fold else 0)
    parallel = target.parallel.compute(flops, geo["N"])
    groups, points, v_size, m_size = _groups(ci, co, blocks["RB"], m)
    us = co * ci + _PAD
    u_values = _distinct(m) ** 2 * us
    reads, writes, nodes = [("gy", gy), ("w", w)], [("out", out)], [node]
    if fold:
        v_size, u_values = _fold_shortcut(fold, groups, v_size, u_values, ci, co)
        reads, writes, nodes = fold["reads"], fold["writes"], fold["nodes"]
    per_thread = split + v_size + m_size + buffer
    # each thread its own U (and UF, after its work memory) or a half each of one shared U
    u_in_thread = per_thread
    private_u = target.parallel.private_weights(u_values, parallel)
    if private_u:
        per_thread, shared = per_thread + u_values, 0
    else:
        shared = u_values
    src = render("conv_winograd_s2_input.c.j2", name=name, node_lines=node_lines(nodes),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 parallel=parallel, per_thread=per_thread, shared=shared, u_at=0,
                 private_u=private_u, u_in_thread=u_in_thread, N=geo["N"],
                 CI=ci, CO=co, YH=geo["OH"], YW=geo["OW"], YP=geo["OH"] * geo["OW"], H=geo["H"],
                 W=geo["W"], P=geo["H"] * geo["W"], SPLIT=split, VL=_VL[ct], US=us,
                 V_SIZE=v_size, M_SIZE=m_size, groups=groups, points=points, MT=m,
                 DIST=_distinct(m), SUM=fold and fold["SUM"], masked=fold and fold["masked"],
                 finite_notes=True,
                 **blocks, **_tiles(co, blocks["RB"], ct))
    return noting_finite(Kernel(name, reads, writes, src,
                                threads_scratch(per_thread, parallel, shared), ct, flops=flops,
                                parallel=parallel), True)


def _lower_backward_input_4(name, node, geo, target):
    """Tiles of 4x4 values from the output gradient's 3x3 tiles (2 apart), 25 products each."""
    blocks = _input_blocking(geo["O"], geo["H"], geo["W"])
    we, rows = blocks["TW"] + 1, 2 * blocks["R"] + 1
    return _render_input(name, node, geo, target, 2, dict(blocks, WE=we, ROWS=rows),
                         rows * 2 * we, 16 * blocks["RB"])


def _lower_backward_input_8(name, node, geo, target, fold=None):
    """Tiles of 8x8 values from the output gradient's 5x5 tiles (4 apart), 81 products each,
    blocked as the forward's tiles (``_blocking_f4`` with tiles of 8: J images interleaved),
    the values stored straight into the image gradient."""
    blocks = _blocking_f4(geo["O"], geo["H"], geo["W"], geo["N"], ctype(node.outputs[0]), m=8)
    we, rows = blocks["TW"] + 1, 4 * blocks["R"] + 1
    return _render_input(name, node, geo, target, 4, dict(blocks, WE=we, ROWS=rows),
                         rows * 4 * we * blocks["J"], 0, fold)

"""C lowerings of convolution, every rank in one place: forward (alone or fused with an
eval-mode ``batch_norm``, a residual ``add``, ``relu`` and ``max_pool``), input gradient and
weight gradient.

Every convolution is lowered as a 3-d one (a 2-d convolution has depth 1, a 1-d one height 1
too) onto the GEMM kernels of ``templates/_gemm.c.j2``: for stride 1 the GEMM reads shifted
views of the (padded) image directly, otherwise im2col columns. The templates emit the depth
loops only when there is a depth (``deep``), so the C of a 1-d or 2-d convolution is the 2-d
code with no trace of the third dim.
"""
from ..._sym import Sym
from ...ops.cexpr import fmt_float
from ...ops.common import numel
from ..base import Kernel, LoweringError, SFX, ctype, group_lowering, lowering, members, \
    node_lines, signature, size_symbols, threads_scratch, where
from ..templates import render
from . import conv_nonfinite, conv_phased, conv_pointwise, conv_winograd, conv_winograd_s2
from .conv_flops import conv_flops
from .normalization import residual_operand, statistics_reads, statistics_scratch
from .pooling import lower_max_pool, pool_geometry


@group_lowering("conv")
@lowering("convolution")
def lower_convolution(name, node, exported, target):
    group = members(node)
    if node.op != "fused":
        exported = set(node.outputs)
    return _lower_conv_group(name, group, exported, target)


@lowering("conv_backward_input")
def lower_conv_backward_input(name, node, exported, target):
    return _lower_conv_backward_input(name, node, target)


@lowering("conv_backward_weight")
def lower_conv_backward_weight(name, node, exported, target):
    return _lower_conv_backward_weight(name, node, target)


# --- geometry ------------------------------------------------------------------------------------


def _conv_geometry(conv):
    x, w = conv.inputs[0], conv.inputs[1]
    return _conv_grad_geometry(conv, x.shape, w.shape, conv.outputs[0].shape)


def _conv_grad_geometry(node, x_shape, w_shape, gy_shape):
    """Convolution geometry as 3-D constants (depth D, height H, width W; 2-D convolutions get
    a depth of 1, 1-D ones a height of 1 too), from the shapes of the input, weight and output
    (or output gradient). ``deep``: the depth is not trivially 1 (templates emit depth loops)."""
    a = node.attrs
    nsp = len(a["stride"])
    if nsp > 3:
        raise LoweringError(f"{nsp}-d convolutions have no C lowering{where(node)}")
    pad = (lambda t, fill: (fill,) * (3 - nsp) + tuple(t))
    xs = pad(x_shape[2:], 1)
    ks = pad(w_shape[2:], 1)
    os_ = pad(gy_shape[2:], 1)
    st, pd, dl = pad(a["stride"], 1), pad(a["padding"], 0), pad(a["dilation"], 1)
    return dict(N=x_shape[0], C=x_shape[1], D=xs[0], H=xs[1], W=xs[2], O=w_shape[0],
                KD=ks[0], KH=ks[1], KW=ks[2], OD=os_[0], OH=os_[1], OW=os_[2],
                SD=st[0], SH=st[1], SW=st[2], PD=pd[0], PH=pd[1], PW=pd[2],
                DD=dl[0], DH=dl[1], DW=dl[2], G=a["groups"],
                deep=not (xs[0] == 1 and ks[0] == 1 and pd[0] == 0))


def _conv_template_geo(geo, ct, direct):
    """What the ``_conv.c.j2`` macros read: the geometry, the channels per group, the C type
    and, for stride 1, the padded image and its positions."""
    g = dict(geo, **(direct or {}))
    g["CG"] = geo["C"] // geo["G"]
    g["ctype"] = ct
    return g


def _direct_geometry(geo):
    """For stride-1 convolutions: the columns of the GEMM are shifted views of the (padded)
    image. Positions run over rows of the padded width WP, OH of them per output depth (the
    last one cut at the output width): NW positions per depth slab, one GEMM per slab, the
    slab of output depth od starting at padded depth od. Returns the padded image size, NW and
    each tap's offset from a slab's start; None for strided convolutions."""
    if geo["SD"] != 1 or geo["SH"] != 1 or geo["SW"] != 1:
        return None
    dp, hp, wp = geo["D"] + 2 * geo["PD"], geo["H"] + 2 * geo["PH"], geo["W"] + 2 * geo["PW"]
    cg = geo["C"] // geo["G"]
    taps = [((c * dp + kd * geo["DD"]) * hp + kh * geo["DH"]) * wp + kw * geo["DW"]
            for c in range(cg) for kd in range(geo["KD"]) for kh in range(geo["KH"])
            for kw in range(geo["KW"])]
    nw = (geo["OH"] - 1) * wp + geo["OW"]
    return dict(DP=dp, HP=hp, WP=wp, NW=nw, taps=taps,
                # positions per output channel over all depth slabs (rows of width WP)
                GW=(geo["OD"] - 1) * geo["OH"] * wp + nw,
                padded=bool(geo["PD"] or geo["PH"] or geo["PW"]))


def _flipped_geometry(geo):
    """The input gradient of a stride-1 convolution is a stride-1 convolution of the output
    gradient (channels O, padded by the kernel's reach less the padding) with the kernel
    flipped and its channels swapped: its geometry, or None for strided convolutions and
    padding past the kernel's reach."""
    if geo["SD"] != 1 or geo["SH"] != 1 or geo["SW"] != 1:
        return None
    pads = [(geo["K" + d] - 1) * geo["D" + d] - geo["P" + d] for d in "DHW"]
    if min(pads) < 0:
        return None
    # an input past the last position any output reads (a transposed convolution's
    # output_padding) would need more padding after than before
    if any(geo["O" + d] + 2 * p - (geo["K" + d] - 1) * geo["D" + d] != geo[d]
           for d, p in zip("DHW", pads)):
        return None
    return dict(geo, C=geo["O"], O=geo["C"], D=geo["OD"], H=geo["OH"], W=geo["OW"],
                OD=geo["D"], OH=geo["H"], OW=geo["W"], PD=pads[0], PH=pads[1], PW=pads[2])


def _flipped_pays(geo, fgeo):
    """Whether the flipped convolution's positions (rows of the padded output gradient's
    width, over the input) are not many more than the per-tap GEMMs' (rows of the padded
    input's width, over the output): with a large kernel on a small image (LeNet's 5x5 on
    10x10) most of the padded gradient is zeros and the per-tap GEMMs do less work."""
    per_tap = _direct_geometry(geo)["GW"]
    return _direct_geometry(fgeo)["GW"] <= 1.25 * per_tap


def _columns(geo):
    """Elements of the im2col column matrix of one image and group."""
    return geo["C"] // geo["G"] * geo["KD"] * geo["KH"] * geo["KW"] * \
        geo["OD"] * geo["OH"] * geo["OW"]


def _padded_image(geo, direct):
    """Elements of one group's zero-padded image (none without padding)."""
    return geo["C"] // geo["G"] * direct["DP"] * direct["HP"] * direct["WP"] \
        if direct["padded"] else 0


def _gradient_work(geo, direct):
    """Scratch elements of a stride-1 gradient kernel: the output gradient on rows of the
    padded width, and the padded image when there is padding."""
    return geo["O"] // geo["G"] * direct["GW"] + _padded_image(geo, direct)


def _gathered_geometry(geo, ct):
    """For the gathered GEMM (``_conv.c.j2``): where each output position's window and each
    tap start in the (padded) image of one group, the padded sizes and the position count P;
    None when the output channels per group are not whole vectors (the vectors run along
    them) or the tables would be large."""
    vl = 32 // (4 if ct == "float" else 8)
    og = geo["O"] // geo["G"]
    cg = geo["C"] // geo["G"]
    if ct not in ("float", "double") or og % vl:
        return None
    p = geo["OD"] * geo["OH"] * geo["OW"]
    k = cg * geo["KD"] * geo["KH"] * geo["KW"]
    dp, hp, wp = geo["D"] + 2 * geo["PD"], geo["H"] + 2 * geo["PH"], geo["W"] + 2 * geo["PW"]
    if p > _GATHERED_MAX_TABLE or k > _GATHERED_MAX_TABLE or cg * dp * hp * wp >= 2 ** 31:
        return None
    positions = [((od * geo["SD"]) * hp + oh * geo["SH"]) * wp + ow * geo["SW"]
                 for od in range(geo["OD"]) for oh in range(geo["OH"]) for ow in range(geo["OW"])]
    taps = [((c * dp + kd * geo["DD"]) * hp + kh * geo["DH"]) * wp + kw * geo["DW"]
            for c in range(cg) for kd in range(geo["KD"]) for kh in range(geo["KH"])
            for kw in range(geo["KW"])]
    padded = bool(geo["PD"] or geo["PH"] or geo["PW"])
    return dict(P=p, K=k, DP=dp, HP=hp, WP=wp, positions=positions, taps=taps, padded=padded,
                image=cg * dp * hp * wp if padded else 0)


def _gathered_pays(geo, direct, gathered):
    """Whether the forward convolution takes the gathered GEMM: not with few taps (a 1x1
    shortcut: transposing its result costs more than the column matrix saves); else for
    strided ones (no column matrix), for stride 1 when the shifted views' rows of the padded width compute many
    positions past the output's (LeNet's 10-wide output on 14-wide rows)."""
    if gathered["K"] < _GATHERED_MIN_TAPS:
        return False
    return direct is None or direct["GW"] > _GATHERED_MIN_WASTE * geo["OD"] * geo["OH"] * geo["OW"]


def _few_channels_vectors(geo, direct, ct, target):
    """Where the few-channel forms apply (a direct stride-1 2-d convolution, one group, up to
    ``_FEW_MAX_CHANNELS`` input channels, float or double, vectors of 32 bytes or more): the
    bytes and the elements of a vector; else None."""
    if direct is None or geo["deep"] or geo["G"] != 1 or geo["C"] > _FEW_MAX_CHANNELS or \
            ct not in ("float", "double") or target.vector_bits < 256:
        return None
    vb = target.vector_bits // 8
    return vb, vb // (4 if ct == "float" else 8)


def _few_channels_geometry(geo, direct, ct, target):
    """For stride-1 2-d convolutions with few input channels (the ResNet's stem, 3 -> 16): the
    register tiles of ``CB`` output channels x ``NV`` vectors of ``VL`` output columns (two
    where the rows are whole pairs of vectors, else one) that sum the
    ``K`` taps straight from the padded image, each input vector loaded once for ``CB``
    multiply-adds (vectors of the widest registers: ``VB`` bytes), and the ``BR`` output rows
    of a band whose epilogue runs while the band is in the first-level cache; None where the
    form does not apply (more channels, more than one group, rows not whole vectors, output
    channels not whole tiles)."""
    vectors = _few_channels_vectors(geo, direct, ct, target)
    if vectors is None:
        return None
    vb, vl = vectors
    cb = _FEW_TILE_CHANNELS_AVX512 if target.vector_bits >= 512 else _FEW_TILE_CHANNELS_AVX2
    if geo["O"] % cb or geo["OW"] % vl:
        return None
    nv = 2 if geo["OW"] % (2 * vl) == 0 else 1
    oh, ow = geo["OH"], geo["OW"]
    br = max(d for d in range(1, oh + 1) if oh % d == 0 and (d == 1 or d * ow <= _FEW_BAND))
    k = geo["C"] * geo["KH"] * geo["KW"]
    return dict(VB=vb, VL=vl, NV=nv, CB=cb, BR=br, K=k, shared=geo["O"] * k)


# Offset tables of the gathered GEMM up to this many entries; stride-1 convolutions take it
# when the shifted views compute more than this many times the output positions (the
# ResNet's 3x3 convolutions on 16x16 and 8x8, 18- and 10-wide padded rows: inference 1.07-1.09x
# with AVX-512 and with AVX2 only, in interleaved A/Bs against 1.25; on 32x32, 34-wide rows,
# the direct form stays faster)
_GATHERED_MAX_TABLE = 16384
_GATHERED_MIN_WASTE = 1.1
_GATHERED_MIN_TAPS = 64

# The few-channel forward (``_few_channels_geometry``): up to this many input channels (the
# stem's 3: 27 taps); tiles of 8 output channels x 2 vectors with AVX-512's 32 registers (16
# accumulators) and of 4 x 2 with AVX2's 16. The stem, 3 -> 16 channels on 32x32, batch 32,
# one thread, its products alone in a C harness: AVX-512 8 x 2 134 us (85 % of the FMA peak),
# 16 x 1 150 us, 4 x 2 146 us; AVX2 4 x 2 272 us, 8 x 1 276 us, 4 x 4 spills (1133 us)
_FEW_MAX_CHANNELS = 3
_FEW_TILE_CHANNELS_AVX512 = 8
_FEW_TILE_CHANNELS_AVX2 = 4
# ... and its epilogue (bias, batch norm, residual, relu, statistics) per band of output rows
# of up to this many values per channel, while the band is in the first-level cache
_FEW_BAND = 256

# The input gradient as GEMMs per kernel row from this many images on: the weights are
# repacked once per call (LeNet's conv2, 6 <- 16 channels, 5x5 on 10x10, one thread: batch 64
# 509 -> 421 us, 439 -> 416 us with AVX2 only; batch 1 7.8 -> 8.0 us, 6.8 -> 7.3 us)
_ROW_FOLDED_MIN_IMAGES = 4

# The sparse input gradient's register blocks: accumulators of one output position's window
# with AVX-512's 32 vector registers and with AVX2's 16 (LeNet's conv2, one thread: 1.6 us
# with blocks of 10 to 20 accumulators, 3.2 us with 30)
_SPARSE_ACCUMULATORS_AVX512 = 15
_SPARSE_ACCUMULATORS_AVX2 = 12
# ... and the sparse weight gradient from this many input channels on: with one (LeNet's conv1,
# five accumulators per output channel, each waiting for its last FMA) it lost, 3.4 -> 3.6 us
_SPARSE_WEIGHT_MIN_CHANNELS = 2

# The weight gradient as GEMMs over input-channel rows and output-channel vectors from this
# many input channels per group on (below, dot products along the positions)
_TAPWISE_MIN_CHANNELS = 8


# --- kernels --------------------------------------------------------------------------------------


def _lower_conv_group(name, group, exported, target, winograd=True):
    """The group's kernel; ``winograd`` False: not by a Winograd form (its direct twin, see
    ``conv_nonfinite.py``)."""
    conv = group[0]
    relu = next((m for m in group if m.op == "relu"), None)
    pool = next((m for m in group if m.op == "max_pool"), None)
    pool_after = outer_exported = None
    if pool is not None and len(pool.attrs["kernel"]) == 3:
        # 3-d max pooling: the general max-pool kernel pools the convolution part's output,
        # which that part then writes in full
        pool_after, pool = pool, None
        outer_exported, exported = exported, set(exported) | {pool_after.inputs[0]}
    geo = _conv_geometry(conv)
    reads = [("x", conv.inputs[0]), ("w", conv.inputs[1])]
    if len(conv.inputs) > 2:
        reads.append(("b", conv.inputs[2]))
    bn = _batch_norm_reads(group, reads)
    res = _residual_read(group, reads)
    writes = []
    stats = _statistics_writes(group, exported, writes)
    # the value before the relu: the convolution's, or its batch norm's, or the residual sum
    conv_v = next(m for m in reversed(group) if m.op in ("convolution", "batch_norm", "add")) \
        .outputs[0]
    plane_out = relu_out = None
    relu_scratch = False
    if conv_v in exported:
        writes.append(("conv_out", conv_v))
        plane_out = "conv_out"
    if relu is not None:
        relu_v = relu.outputs[0]
        if relu_v in exported:
            writes.append(("relu_out", relu_v))
            if plane_out:
                relu_out = "relu_out"
            else:
                plane_out = "relu_out"
        elif plane_out:
            relu_scratch = True
    if pool is not None:
        writes.append(("pool_out", pool.outputs[0]))
        if pool.outputs[1] in exported:
            writes.append(("pool_idx", pool.outputs[1]))
    elif plane_out is None:
        raise AssertionError("a conv group without pooling must export its last value")
    conv_writes = list(writes)
    ct = ctype(conv_v)
    if pool is None and pool_after is None and conv_pointwise.applies(geo, ct):
        return conv_pointwise.lower_forward(name, group, geo, reads, writes, plane_out,
                                            relu_out, bn, res, stats, target)
    for form in (conv_winograd, conv_winograd_s2) if winograd else ():
        if pool is None and pool_after is None and form.takes_forward(geo, ct, target):
            kernel = form.lower_forward(f"{name}_winograd", group, geo, reads, writes,
                                        plane_out, relu_out, bn, res, stats, target)
            direct = _lower_conv_group(f"{name}_direct", group, exported, target, False)
            return _forward_checked(name, kernel, direct)
    direct = _direct_geometry(geo)
    few = None
    if pool is None and pool_after is None:
        few = _few_channels_geometry(geo, direct, ct, target)
    gathered = _gathered_geometry(geo, ct) if pool_after is None and few is None else None
    if gathered is not None and not _gathered_pays(geo, direct, gathered):
        gathered = None
    if gathered is not None:
        direct = None
    t = _conv_template_geo(geo, ct, direct)
    plane = geo["O"] // geo["G"] * geo["OD"] * geo["OH"] * geo["OW"]
    pool_geo = pool_geometry(pool, geo["OH"], geo["OW"]) if pool else None
    # 2x2 stride-2 max-pool of relu(conv + bias) read straight from the GEMM's output, eight
    # (or four) windows per vector step, when no full-size plane is wanted
    pool_2x2 = bool(pool_geo and relu and direct and plane_out is None and ct == "float" and
                    not bn and not res and
                    pool_geo["inside"] and pool_geo["OW"] >= 4 and
                    all(pool_geo[k] == v for k, v in (("KH", 2), ("KW", 2), ("SH", 2),
                                                      ("SW", 2), ("DH", 1), ("DW", 1))))
    # a max-pool (with or without relu) of the gathered GEMM's [positions][channels] result,
    # vectors along the output channels, when no full-size plane is wanted
    pool_channels = bool(gathered and pool_geo and plane_out is None and ct == "float" and
                         not bn and not res and stats is None and not geo["deep"] and
                         pool_geo["inside"] and pool_geo["KH"] * pool_geo["KW"] <= 16)
    if few:
        # the padded image (the tiles write the output planes)
        work = _padded_image(geo, direct)
    elif gathered:
        # the GEMM's output, [positions][output channels], then the padded image
        work = gathered["P"] * (geo["O"] // geo["G"]) + gathered["image"]
        gathered["shared"] = geo["O"] * gathered["K"]  # the weights transposed
        gathered["geo"] = dict(t, DP=gathered["DP"], HP=gathered["HP"], WP=gathered["WP"])
    elif direct:
        # the GEMM's output on rows of width WP, then the padded image
        work = geo["O"] // geo["G"] * geo["OD"] * geo["OH"] * direct["WP"] + \
            _padded_image(geo, direct)
    else:
        work = _columns(geo)
    # then two planes for a relu and a max pooling fused per plane (1-d and 2-d groups only)
    per_thread = work + (plane * 2 if len(conv.attrs["stride"]) < 3 else 0)
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    # scratch: [the statistics' per-thread sums][the weights transposed][one slice per thread]
    shared = gathered["shared"] if gathered else few["shared"] if few else 0
    stats_at = 0
    if stats is not None:
        stats_at = statistics_scratch(stats, geo["O"], ct, parallel, target)
        shared += stats_at
    scratch = threads_scratch(per_thread, parallel, shared)
    fn, then_pool = name, None
    if pool_after is not None:
        fn = f"{name}_conv"
        then_pool, writes, scratch = _then_pool(name, reads, writes, scratch, pool_after,
                                                outer_exported, target)
    src = render("conv2d.c.j2", name=fn, node_lines=node_lines(group), ctype=ct,
                 sfx=SFX[ct], signature=signature(reads, conv_writes, 1, ct),
                 has_bias=len(conv.inputs) > 2, plane_out=plane_out, relu=relu is not None,
                 relu_out=relu_out, relu_scratch=relu_scratch,
                 pool=pool_geo, pool_2x2=pool_2x2, pool_channels=pool_channels,
                 pool_idx=pool is not None and pool.outputs[1] in exported, geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread,
                 work_elems=work, direct=bool(direct), gathered=gathered, then_pool=then_pool,
                 bn=bn, res=res, stats=stats, stats_at=stats_at, shared=shared, few=few,
                 **(direct or {}), **geo)
    return Kernel(name, reads, writes, src, scratch, ct, flops=conv_flops(geo),
                  parallel=parallel or bool(then_pool and then_pool["parallel"]))


def _forward_checked(name, kernel, direct):
    """The Winograd forward ``kernel`` with its ``direct`` twin (``conv_nonfinite.py``),
    checked by its own notes (``conv_winograd.notes_finite``), else by a training batch
    norm's means."""
    if kernel.finite_flag:
        return conv_nonfinite.checked(name, kernel, direct, [])
    return conv_nonfinite.checked(name, kernel, direct, conv_nonfinite.stored(kernel, "mean_out"))


def _batch_norm_reads(group, reads, prefix="bn_"):
    """For an eval-mode batch norm in the group: append its running statistics (and weight
    and bias) to ``reads`` (roles from ``prefix``); returns what the template needs (None
    without one)."""
    bn = next((m for m in group if m.op == "batch_norm"), None)
    if bn is None:
        return None
    reads += statistics_reads(bn, prefix)
    a = bn.attrs
    return dict(eps=fmt_float(a["eps"], "double"), has_weight=a["has_weight"],
                has_bias=a["has_bias"])


def _statistics_writes(group, exported, writes, prefix=""):
    """For a training-mode batch norm's ``batch_norm_stats`` in the group: append its mean and
    variance to ``writes`` (roles ``prefix`` + mean_out, var_out); returns what the template
    needs (None without one)."""
    st = next((m for m in group if m.op == "batch_norm_stats"), None)
    if st is None:
        return None
    mean, var = st.outputs
    for role, v in ((prefix + "mean_out", mean), (prefix + "var_out", var)):
        if v in exported:
            writes.append((role, v))
    return dict(mean_out=mean in exported, var_out=var in exported)


def _residual_read(group, reads):
    """For a residual ``add`` in the group: append the added tensor to ``reads``."""
    i = next((i for i, m in enumerate(group) if m.op == "add"), None)
    if i is None:
        return False
    reads.append(("res", residual_operand(group[i], group[i - 1].outputs[0])))
    return True


def _then_pool(name, reads, conv_writes, conv_scratch, pool, exported, target):
    """conv [-> relu] -> 3-d max_pool: the convolution function (``{name}_conv``) writes the
    pooling input in full, to scratch when nothing else reads it, then the general max-pool
    kernel (``{name}_pool``) pools it. Returns what the template needs for the function
    ``name`` calling both, and that function's writes and scratch."""
    pooled = pool.inputs[0]
    kept = pooled in exported
    pool_k = lower_max_pool(f"{name}_pool", pool, exported, target)
    if pool_k.scratch:
        raise LoweringError(f"max pooling fused after a convolution cannot use scratch "
                            f"memory{where(pool)}")
    shared = 0 if kept else numel(pooled.shape)  # the pooling input, ahead of the conv's scratch
    writes = [(r, v) for r, v in conv_writes if v in exported]
    writes += [(f"pool_{r}", v) for r, v in pool_k.writes]
    conv_args = [f"tn_{s}" for s in size_symbols(reads, conv_writes)]
    conv_args += [r for r, _ in reads] + [r if v in exported else "pooled" for r, v in conv_writes]
    conv_args.append(f"scratch + {shared}" if shared else "scratch")
    pool_in = next(r for r, v in conv_writes if v is pooled) if kept else "pooled"
    pool_args = [f"tn_{s}" for s in pool_k.symbols] + [pool_in] + \
        [f"pool_{r}" for r, _ in pool_k.writes]
    if shared:
        conv_scratch = (conv_scratch[0], "threads", shared) if isinstance(conv_scratch, tuple) \
            else conv_scratch + shared
    ct = ctype(pooled)
    return (dict(name=name, source=pool_k.source, parallel=pool_k.parallel, shared=shared,
                 signature=signature(reads, writes, 1, ct), pool_name=pool_k.name,
                 conv_args=", ".join(conv_args), pool_args=", ".join(pool_args)),
            writes, conv_scratch)


def _lower_conv_backward_input(name, node, target, winograd=True):
    """The input gradient's kernel; ``winograd`` False: not by a Winograd form."""
    gy, w = node.inputs
    out = node.outputs[0]
    geo = _conv_grad_geometry(node, out.shape, w.shape, gy.shape)
    ct = ctype(out)
    if conv_pointwise.takes_input_gradient(geo, ct, target):
        return conv_pointwise.lower_backward_input(name, node, geo, target)
    for form in (conv_winograd, conv_winograd_s2) if winograd else ():
        if form.takes_input_gradient(geo, ct, target):
            kernel = form.lower_backward_input(f"{name}_winograd", node, geo, target)
            direct = _lower_conv_backward_input(f"{name}_direct", node, target, False)
            return conv_nonfinite.checked(name, kernel, direct, [])  # (its own notes)
    if conv_phased.takes_input_gradient(geo, ct):
        return conv_phased.lower_backward_input(name, node, geo, target)
    return _sparse_or_general(name, node, geo, ct, target, "input", _max_pooled(gy),
                              _lower_general_backward_input)


def _lower_general_backward_input(name, node, geo, ct, target):
    """The flipped convolution, GEMMs per kernel row or per tap, or col2im (strided)."""
    flipped = _flipped_geometry(geo)
    if flipped is not None and _flipped_pays(geo, flipped):
        return _lower_flipped_backward_input(name, node, geo, flipped, ct, target)
    direct = _direct_geometry(geo)
    folds = direct is not None and not geo["deep"] and geo["KW"] > 1
    n = geo["N"]
    if folds and not isinstance(n, Sym) and n >= _ROW_FOLDED_MIN_IMAGES:
        return _lower_row_folded_backward_input(name, node, geo, direct, ct, target)
    if not folds or not isinstance(n, Sym):
        return _lower_per_tap_backward_input(name, node, geo, direct, ct, target)
    return _lower_row_folded_backward_input(
        name, node, geo, direct, ct, target,
        _lower_per_tap_backward_input(f"{name}_taps", node, geo, direct, ct, target))


def _max_pooled(gradient):
    """Whether ``gradient`` comes from a max pooling's backward (through relu's, maybe in one
    fused kernel): mostly zeros, one value per window of a pooling whose windows do not
    overlap."""
    node = gradient.producer
    while node is not None:
        if any(m.op == "max_pool_backward" for m in members(node)):
            return True
        if node.op != "threshold_backward":
            return False
        node = node.inputs[0].producer
    return False


def _sparse_gradient_geometry(geo, ct):
    """For the gradients of a 2-d stride-1 convolution with one group, no dilation, at most 32
    output channels (64 in float64) and a kernel whose rows fit a register block: the padded
    image (HP x WP), the vectors per kernel row (RV), the elements a row's last vector reads past
    it (SLACK), the weights' elements with that slack (WS) and the blocks of input channels
    with AVX-512's vector registers and with AVX2's (``_SPARSE_ACCUMULATORS_*``; a smaller
    block for the channels left); None where it does not apply."""
    vl = 32 // (4 if ct == "float" else 8)
    # (the input gradient's masks of output channels have the lanes of the element type)
    if ct not in ("float", "double") or geo["deep"] or geo["G"] != 1 or \
            geo["O"] > 8 * 32 // vl or (geo["SH"], geo["SW"], geo["DH"], geo["DW"]) != (1, 1, 1, 1):
        return None
    rv = -(-geo["KW"] // vl)
    row = geo["KH"] * rv  # accumulators per input channel
    if row > _SPARSE_ACCUMULATORS_AVX2:
        return None
    c = geo["C"]
    cb512 = min(c, _SPARSE_ACCUMULATORS_AVX512 // row)
    cb2 = min(c, _SPARSE_ACCUMULATORS_AVX2 // row)
    return dict(HP=geo["H"] + 2 * geo["PH"], WP=geo["W"] + 2 * geo["PW"], RV=rv, SLACK=rv * vl,
                WS=geo["O"] * c * geo["KH"] * geo["KW"] + rv * vl,
                CB512=cb512, tail512=c % cb512, CB2=cb2, tail2=c % cb2,
                blocks=sorted({cb512, cb2, c % cb512, c % cb2} - {0}))


def _sparse_or_general(name, node, geo, ct, target, of, mostly_zero, general):
    """The input or weight gradient (``of``) by ``general``, or, when the output gradient is
    ``mostly_zero`` and the geometry and the dense kernel's scratch allow (sizes known when
    compiled), the sparse kernel with that dense one compiled beside it. The sparse kernel
    splits the images between threads when the dense one is built for threads."""
    sparse = _sparse_gradient_geometry(geo, ct) if mostly_zero else None
    if sparse is not None:
        dense = general(f"{name}_dense", node, geo, ct, target)
        if _scratch_elements_known(dense.scratch):
            return _lower_sparse_gradient(name, node, geo, sparse, dense, ct, of)
    return general(name, node, geo, ct, target)


def _scratch_elements_known(scratch):
    parts = scratch if isinstance(scratch, tuple) else (scratch,)
    return all(isinstance(p, int) for p in parts if p != "threads")


def _lower_sparse_gradient(name, node, geo, sparse, dense, ct, of):
    """The input or weight gradient (``of``) from a mostly-zero output gradient
    (``_sparse_gradient_geometry``), with the ``dense`` kernel for output gradients with more
    nonzeros or operands that are not all finite; both use scratch from its start. Per
    thread, the input gradient's scratch holds a copy of the weights, one padded image
    gradient and its masks; the weight gradient's one padded image and a weight gradient,
    each with the slack a row's last vector reads or writes past it. Split between threads
    as the dense kernel is (whole images per thread; the threads' weight gradients are added
    in thread order)."""
    gy, other = node.inputs
    out = node.outputs[0]
    role = "w" if of == "input" else "x"
    reads, writes = [("gy", gy), (role, other)], [("out", out)]
    parallel = dense.parallel
    if of == "input":
        per_thread = sparse["WS"] + geo["C"] * sparse["HP"] * sparse["WP"] + sparse["SLACK"] + \
            geo["OH"] * geo["OW"]  # (a mask per position, as wide as an element)
    else:
        per_thread = geo["C"] * sparse["HP"] * sparse["WP"] + numel(out.shape) + \
            2 * sparse["SLACK"]
    if parallel:  # (each thread's slice on its own cache lines)
        per_thread = -(-per_thread // 16) * 16
    args = [f"tn_{s}" for s in size_symbols(reads, writes)] + ["gy", role, "out", "scratch"]
    src = render(f"conv_backward_{of}_sparse.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 sparse=sparse, dense=dense, dense_args=", ".join(args), parallel=parallel,
                 per_thread=per_thread, **geo)
    own = threads_scratch(per_thread, parallel)
    return Kernel(name, reads, writes, src, conv_nonfinite.scratch_for_either(own, dense.scratch), ct,
                  flops=conv_flops(geo), parallel=parallel)


def _lower_per_tap_backward_input(name, node, geo, direct, ct, target):
    """Stride 1: one GEMM per image, group and tap adding [C/G x O/G] weights times the output
    gradient to the shifted input gradient; else column gradients, then col2im."""
    gy, w = node.inputs
    out = node.outputs[0]
    t = _conv_template_geo(geo, ct, direct)
    per_thread = _gradient_work(geo, direct) if direct else _columns(geo)
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    src = render("conv_backward_input.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct), geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread, flipped=False,
                 folded=None, direct=bool(direct), **(direct or {}), **geo)
    return Kernel(name, reads, writes, src, threads_scratch(per_thread, parallel), ct,
                  flops=conv_flops(geo), parallel=parallel)


def _lower_flipped_backward_input(name, node, geo, fgeo, ct, target):
    """Stride 1: one GEMM per image and group (and input depth) over shifted views of the
    padded output gradient, with [C/G x O/G * taps] flipped weights repacked once per call
    (shared scratch ahead of the threads' slices), the result on rows of the padded width."""
    gy, w = node.inputs
    out = node.outputs[0]
    direct = _direct_geometry(fgeo)
    t = _conv_template_geo(fgeo, ct, direct)
    shared = geo["O"] * (geo["C"] // geo["G"]) * geo["KD"] * geo["KH"] * geo["KW"]
    wide = geo["C"] // geo["G"] * geo["D"] * geo["H"] * direct["WP"]
    per_thread = wide + _padded_image(fgeo, direct)
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    scratch = threads_scratch(per_thread, parallel, shared)
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    src = render("conv_backward_input.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct), geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread, shared=shared,
                 wide_elems=wide, flipped=True, direct=True, **direct, **fgeo)
    return Kernel(name, reads, writes, src, scratch, ct, flops=conv_flops(geo),
                  parallel=parallel)


def _row_folded_geometry(geo, direct, ct):
    """The input gradient of a 2-d stride-1 convolution as one GEMM per kernel row kh: the
    kernel row's taps (o, kw) are the GEMM's depth, the columns NQ positions of the output
    gradient on rows of the padded input's width WP (zeros past column OW), and the result is
    added to the padded input gradient from row kh on. A tap's shift by kw reads, left of a
    row, the zeros past the previous row's column OW (WP - OW is the kernel row's reach), and
    LEAD zeros before the first row. NQ is rounded up to whole vectors (no scalar column
    tail); each channel's padded gradient gets LDC elements so the rounding stays in its row."""
    vl = 32 // (4 if ct == "float" else 8)
    wp = direct["WP"]
    nq = -(-geo["OH"] * wp // vl) * vl
    lead = (geo["KW"] - 1) * geo["DW"]
    og = geo["O"] // geo["G"]
    return dict(NQ=nq, LEAD=lead, GWS=lead + nq,
                LDC=max(direct["HP"] * wp, (geo["KH"] - 1) * geo["DH"] * wp + nq),
                rows=[o * (lead + nq) - kw * geo["DW"] for o in range(og)
                      for kw in range(geo["KW"])])


def _lower_row_folded_backward_input(name, node, geo, direct, ct, target, per_tap=None):
    """Stride 1, 2-d, where the flipped convolution would compute many zeros (a large kernel
    on a small image): KH GEMMs of depth O/G * KW per image and group (``_row_folded_geometry``)
    rather than KH * KW of depth O/G, with the weights repacked once per call (shared scratch
    ahead of the threads' slices). Repacking costs more than it saves on fewer than
    ``_ROW_FOLDED_MIN_IMAGES`` images: with a symbolic batch, ``per_tap`` (the per-tap kernel)
    is compiled in too and the batch size picks one of the two when the kernel runs."""
    gy, w = node.inputs
    out = node.outputs[0]
    folded = _row_folded_geometry(geo, direct, ct)
    og, cg = geo["O"] // geo["G"], geo["C"] // geo["G"]
    shared = geo["O"] * cg * geo["KH"] * geo["KW"]
    per_thread = og * folded["GWS"] + cg * folded["LDC"]
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    if per_tap is not None:
        # the per-tap kernel indexes its own (smaller or equal) slices from scratch's start
        tap_scratch = per_tap.scratch[0] if isinstance(per_tap.scratch, tuple) else per_tap.scratch
        per_thread = max(per_thread, tap_scratch)
    scratch = threads_scratch(per_thread, parallel, shared)
    t = _conv_template_geo(geo, ct, direct)
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    src = render("conv_backward_input.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct), geo=t,
                 CG=cg, OG=og, parallel=parallel, scratch_per_thread=per_thread,
                 shared=shared, flipped=False, folded=folded, direct=True,
                 per_tap=per_tap and dict(name=per_tap.name, source=per_tap.source,
                                          min_images=_ROW_FOLDED_MIN_IMAGES,
                                          args=", ".join(
                                              [f"tn_{s}" for s in size_symbols(reads, writes)] +
                                              ["gy", "w", "out", "scratch"])),
                 **direct, **geo)
    return Kernel(name, reads, writes, src, scratch, ct, flops=conv_flops(geo),
                  parallel=parallel)


def _lower_conv_backward_weight(name, node, target, winograd=True):
    """The weight gradient's kernel; ``winograd`` False: not by a Winograd form. A Winograd
    form's direct twin (``conv_nonfinite.py``) is the gathered GEMM or columns (``shifted``
    False): their products are eager mode's, the output gradient's positions only."""
    gy, x = node.inputs
    out = node.outputs[0]
    geo = _conv_grad_geometry(node, x.shape, out.shape, gy.shape)
    ct = ctype(out)
    if conv_pointwise.applies(geo, ct):
        return conv_pointwise.lower_backward_weight(name, node, geo, target)
    few = _few_channels_weight_geometry(geo, ct, target)
    if few is not None:
        return _lower_few_channels_weight(name, node, geo, few, ct, target)
    if winograd and conv_winograd.takes_weight_gradient(geo, ct, target):
        kernel = conv_winograd.lower_backward_weight(f"{name}_winograd", node, geo, target)
        direct = _lower_general_backward_weight(f"{name}_direct", node, geo, ct, target,
                                                shifted=False)
        return conv_nonfinite.checked(name, kernel, direct, conv_nonfinite.stored(kernel, "out"))
    return _sparse_or_general(name, node, geo, ct, target, "weight",
                              _max_pooled(gy) and geo["C"] >= _SPARSE_WEIGHT_MIN_CHANNELS,
                              _lower_general_backward_weight)


# The few-channel weight gradient (``_few_channels_weight_geometry``): tiles of 8 output
# channels x a kernel row's 3 taps with AVX-512 (24 of the 32 registers accumulating) and of
# 4 x 3 with AVX2's 16. The stem, 3 -> 16 channels on 32x32, batch 32, one thread, its sums
# alone in a C harness: AVX-512 8 x 3 171 us, 4 x 3 228 us; AVX2 4 x 3 273 us, 2 x 3 385 us
_FEW_WEIGHT_ACCUMULATORS_AVX512 = 24
_FEW_WEIGHT_ACCUMULATORS_AVX2 = 12
# ... from this many positions an image on: 3 -> 16 channels on 16x16, batch 32, one thread,
# 49-58 us against the Winograd form's 42 with AVX-512 (several images summed before the
# additions in double, and one at a time), 85 against the gathered GEMM's 82 with AVX2 only
_FEW_WEIGHT_MIN_POSITIONS = 1024


def _few_channels_weight_geometry(geo, ct, target):
    """For the weight gradient of a stride-1 2-d convolution with few input channels (the
    ResNet's stem): register tiles of ``CB`` output channels x a kernel row's taps, vectors of
    ``VL`` output columns (``VB`` bytes) summed along the positions
    (``conv_backward_weight_few.c.j2``); each thread's scratch is the padded image, then at
    ``sums_at`` its double sums by lanes (``per_thread`` elements in all). None where the form
    does not apply (as the forward's ``_few_channels_geometry``, a kernel row too long for the
    registers, or images of fewer than ``_FEW_WEIGHT_MIN_POSITIONS`` positions)."""
    direct = _direct_geometry(geo)
    vectors = _few_channels_vectors(geo, direct, ct, target)
    if vectors is None:
        return None
    vb, vl = vectors
    cb, accumulators = (_FEW_TILE_CHANNELS_AVX512, _FEW_WEIGHT_ACCUMULATORS_AVX512) \
        if target.vector_bits >= 512 else (_FEW_TILE_CHANNELS_AVX2, _FEW_WEIGHT_ACCUMULATORS_AVX2)
    if geo["O"] % cb or cb * geo["KW"] > accumulators or geo["OW"] % vl or \
            geo["OH"] * geo["OW"] < _FEW_WEIGHT_MIN_POSITIONS:
        return None
    line = 64 // (4 if ct == "float" else 8)  # elements of a cache line
    sums_at = -(-geo["C"] * direct["HP"] * direct["WP"] // line) * line
    sums = geo["O"] * geo["C"] * geo["KH"] * geo["KW"] * vl * 8 // (4 if ct == "float" else 8)
    return dict(VB=vb, VL=vl, CB=cb, sums_at=sums_at, per_thread=sums_at + sums,
                HP=direct["HP"], WP=direct["WP"])


def _lower_few_channels_weight(name, node, geo, few, ct, target):
    """The weight gradient with few input channels: each thread sums its images in register
    tiles (``_few_channels_weight_geometry``), then the threads' sums are added."""
    gy, x = node.inputs
    out = node.outputs[0]
    t = _conv_template_geo(geo, ct, dict(HP=few["HP"], WP=few["WP"]))
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("x", x)], [("out", out)]
    src = render("conv_backward_weight_few.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, signature=signature(reads, writes, 1, ct), geo=t, f=few,
                 parallel=parallel, **dict(geo, HP=few["HP"], WP=few["WP"]))
    return Kernel(name, reads, writes, src, threads_scratch(few["per_thread"], parallel), ct,
                  flops=conv_flops(geo), parallel=parallel)


# The weight gradient's gathered GEMM sums over at least this many positions a call, several
# small images to one call: its K is the positions, and each register tile's sums are loaded
# and stored once per call (the ResNet's 32->64 stride-2 gradient on 8x8 outputs: four images
# a call)
_GATHERED_WEIGHT_MIN_K = 256


def _batch_gathered_images(gathered, geo):
    """Sets how many images one gathered GEMM of the weight gradient takes (``images``), their
    images' distance in the (padded) source and the positions table over all of them."""
    stride = gathered["image"] or geo["C"] * geo["D"] * geo["H"] * geo["W"]
    images = max(1, _GATHERED_WEIGHT_MIN_K // gathered["P"])
    while images > 1 and images * stride >= 2 ** 31:
        images -= 1
    gathered.update(images=images, image_stride=stride,
                    batch_positions=[p + b * stride for b in range(images)
                                     for p in gathered["positions"]])


# The weight gradient's AVX-512 gathered tiles: a channel's taps (read at constant offsets
# from one pointer) x one or two vectors of 16 output channels, up to 24 of the 32 registers
# accumulating, the positions in chunks of this many. The ResNet's stride-2 gradients, one
# thread, interleaved in one process: 16->32 772-840 -> 756-804 us, 32->64 725-734 ->
# 708-714 us (1.01-1.05x); 12 taps through a pointer each lost (0.92-0.99x: too few
# general registers)
_GATHERED_WEIGHT_TILE_K = 256


def _gathered_weight_tile(geo, ct, target):
    """The weight gradient's own AVX-512 tile for its gathered GEMM (``MR`` taps x ``NV``
    vectors of 16 output channels, ``KC`` positions a chunk), or None: float32 with AVX-512,
    whole vectors of output channels per group and at most 24 accumulators."""
    og = geo["O"] // geo["G"]
    kk = geo["KD"] * geo["KH"] * geo["KW"]
    nv = 2 if og % 32 == 0 else 1
    if ct != "float" or target.vector_bits < 512 or og % 16 or kk * nv > 24:
        return None
    return dict(MR=kk, NV=nv, KC=_GATHERED_WEIGHT_TILE_K)


def _transpose16_stages():
    """The four stages of a 16 x 16 transpose in 16-float vectors (``_gathered_tile.c.j2``'s
    ``transpose16``): per stage, each output vector as (first input, second input, the
    indices into their 32 elements). Pairs of rows interleaved by elements, then by pairs,
    then 128-bit lanes twice (AVX-512's unpcklps, unpcklpd and shuf_f32x4 patterns)."""
    def per_lane(pattern):
        return [4 * lane + i for lane in range(4) for i in pattern]

    def lanes(first, second):
        return [4 * a + i for a in first for i in range(4)] + \
            [16 + 4 * b + i for b in second for i in range(4)]
    elements = (per_lane([0, 16, 1, 17]), per_lane([2, 18, 3, 19]))
    pairs = (per_lane([0, 1, 16, 17]), per_lane([2, 3, 18, 19]))
    even, odd = lanes((0, 2), (0, 2)), lanes((1, 3), (1, 3))
    return [
        [(2 * i, 2 * i + 1, e) for i in range(8) for e in elements],
        [(4 * g + k, 4 * g + k + 2, p) for g in range(4) for k in (0, 1) for p in pairs],
        [(8 * h + j, 8 * h + j + 4, lane) for h in range(2) for lane in (even, odd)
         for j in range(4)],
        [(j, j + 8, lane) for lane in (even, odd) for j in range(8)],
    ]


def _channel_planes(gathered, geo):
    """The positions of the images of one call in one channel's padded planes (placed one after
    another), for the AVX-512 tile to copy and sum a channel at a time, or None: 2-d padded
    images whose positions of a call are one chunk of the tile."""
    wide = gathered["wide"]
    if wide is None or not gathered["padded"] or geo["deep"] or \
            gathered["images"] * gathered["P"] > wide["KC"]:
        return None
    plane = gathered["HP"] * gathered["WP"]
    return [p + b * plane for b in range(gathered["images"]) for p in gathered["positions"]]


def _lower_general_backward_weight(name, node, geo, ct, target, shifted=True):
    """Tap-wise GEMMs, a gathered GEMM, dot products along the positions, or columns; with
    ``shifted`` False not on shifted views of the padded image (whose rows' gaps multiply the
    image by zeros: a NaN where it is not finite)."""
    gy, x = node.inputs
    out = node.outputs[0]
    wsize = numel(out.shape)
    direct = _direct_geometry(geo) if shifted else None
    t = _conv_template_geo(geo, ct, direct)
    # with a row block of input channels, GEMMs vectorised along the output channels
    tapwise = t["CG"] >= _TAPWISE_MIN_CHANNELS
    # else (few input channels), and for strided convolutions, one gathered GEMM: no column
    # matrix, and vectors along the output channels too
    gathered = _gathered_geometry(geo, ct)
    if gathered is not None and direct and tapwise:
        gathered = None
    if gathered is not None:
        _batch_gathered_images(gathered, geo)
        gathered["wide"] = _gathered_weight_tile(geo, ct, target)
        gathered["planes"] = _channel_planes(gathered, geo)
        work = gathered["images"] * (gathered["P"] * (geo["O"] // geo["G"]) + gathered["image"])
        gathered["geo"] = dict(t, DP=gathered["DP"], HP=gathered["HP"], WP=gathered["WP"])
    else:
        work = _gradient_work(geo, direct) if direct else _columns(geo)
    if tapwise and not direct and gathered is None:
        work += geo["O"] // geo["G"] * geo["OD"] * geo["OH"] * geo["OW"]  # the output gradient, transposed
    per_thread = work + wsize
    parallel = target.parallel.compute(conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("x", x)], [("out", out)]
    # dot products along the positions: register tiles of output channels x taps
    # few channels: register tiles of dot products along the positions (tn_gemm_dots)
    dots = bool(direct and not tapwise and gathered is None)
    src = render("conv_backward_weight.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct), geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread, work_elems=work,
                 max_threads="TN_MAX_THREADS", direct=bool(direct), tapwise=tapwise,
                 gathered=gathered, dots=dots,
                 **(direct or {}), **geo)
    return Kernel(name, reads, writes, src, threads_scratch(per_thread, parallel), ct,
                  flops=conv_flops(geo), parallel=parallel)

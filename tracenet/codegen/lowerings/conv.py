"""C lowerings of convolution, every rank in one place: forward (alone or fused with ``relu``
and ``max_pool``), input gradient and weight gradient.

1-d and 2-d convolutions share the GEMM-based templates (a 1-d convolution is a 2-d one of
height 1): for stride 1 the GEMM reads shifted views of the (padded) image directly, otherwise
im2col columns. 3-d convolutions use direct loops (``templates/vision_conv3d*.c.j2``).
"""
from ...ops.common import numel
from ..base import Kernel, LoweringError, SFX, ctype, group_lowering, lowering, members, \
    node_lines, signature, threads_scratch, where
from ..templates import render
from .pooling import lower_max_pool, pool_geometry


def _rank(node):
    return len(node.attrs["stride"])


@group_lowering("conv")
@lowering("convolution")
def lower_convolution(name, node, exported, target):
    group = members(node)
    if node.op != "fused":
        exported = set(node.outputs)
    if _rank(group[0]) == 3:
        return _lower_conv3d_group(name, group, exported, target)
    return _lower_conv_group(name, group, exported, target)


@lowering("conv_backward_input")
def lower_conv_backward_input(name, node, exported, target):
    if _rank(node) == 3:
        return _lower_conv3d_backward_input(name, node, target)
    return _lower_conv_backward_input(name, node, target)


@lowering("conv_backward_weight")
def lower_conv_backward_weight(name, node, exported, target):
    if _rank(node) == 3:
        return _lower_conv3d_backward_weight(name, node, target)
    return _lower_conv_backward_weight(name, node, target)


# --- 1-d and 2-d ----------------------------------------------------------------------------------


def _conv_geometry(conv):
    x, w = conv.inputs[0], conv.inputs[1]
    return _conv_grad_geometry(conv, x.shape, w.shape, conv.outputs[0].shape)


def _conv_grad_geometry(node, x_shape, w_shape, gy_shape):
    """Convolution geometry as 2-D constants (1-D convolutions get a height of 1), from the
    shapes of the input, weight and output (or output gradient)."""
    a = node.attrs
    nsp = len(a["stride"])
    if nsp > 2:
        raise LoweringError(f"{nsp}-d convolution gradients have no C lowering yet{where(node)}")
    pad1 = (lambda t, fill: (fill,) * (2 - nsp) + tuple(t))
    xs = tuple(x_shape[:2]) + pad1(x_shape[2:], 1)
    ks = pad1(w_shape[2:], 1)
    os_ = pad1(gy_shape[2:], 1)
    st, pd, dl = pad1(a["stride"], 1), pad1(a["padding"], 0), pad1(a["dilation"], 1)
    return dict(N=xs[0], C=xs[1], H=xs[2], W=xs[3], O=w_shape[0], KH=ks[0], KW=ks[1],
                OH=os_[0], OW=os_[1], SH=st[0], SW=st[1], PH=pd[0], PW=pd[1], DH=dl[0],
                DW=dl[1], G=a["groups"])


def _conv_template_geo(geo, ct):
    g = dict(geo)
    g["CG"] = geo["C"] // geo["G"]
    g["ctype"] = ct
    return g


def _conv_flops(geo):
    return 2 * geo["N"] * geo["O"] * (geo["C"] // geo["G"]) * geo["KH"] * geo["KW"] * \
        geo["OH"] * geo["OW"]


def _direct_geometry(geo):
    """For stride-1 convolutions: the columns of the GEMM are shifted views of the (padded)
    image. Returns the padded image size, the number of positions (rows of the padded width,
    the last one cut at the output width) and each tap's offset; None for strided ones."""
    if geo["SH"] != 1 or geo["SW"] != 1:
        return None
    hp, wp = geo["H"] + 2 * geo["PH"], geo["W"] + 2 * geo["PW"]
    cg = geo["C"] // geo["G"]
    taps = [c * hp * wp + kh * geo["DH"] * wp + kw * geo["DW"]
            for c in range(cg) for kh in range(geo["KH"]) for kw in range(geo["KW"])]
    return dict(HP=hp, WP=wp, NW=(geo["OH"] - 1) * wp + geo["OW"], taps=taps,
                padded=bool(geo["PH"] or geo["PW"]))


def _gradient_work(geo, direct):
    """Scratch elements of a stride-1 gradient kernel: the output gradient on rows of the
    padded width, and the padded image when there is padding."""
    return geo["O"] // geo["G"] * direct["NW"] + \
        (geo["C"] // geo["G"] * direct["HP"] * direct["WP"] if direct["padded"] else 0)


def _lower_conv_group(name, group, exported, target):
    conv = group[0]
    relu = next((m for m in group if m.op == "relu"), None)
    pool = next((m for m in group if m.op == "max_pool"), None)
    geo = _conv_geometry(conv)
    reads = [("x", conv.inputs[0]), ("w", conv.inputs[1])]
    if len(conv.inputs) > 2:
        reads.append(("b", conv.inputs[2]))
    writes = []
    conv_v = conv.outputs[0]
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
    ct = ctype(conv_v)
    t = _conv_template_geo(geo, ct)
    plane = geo["O"] // geo["G"] * geo["OH"] * geo["OW"]
    direct = _direct_geometry(geo)
    pool_geo = pool_geometry(pool, geo["OH"], geo["OW"]) if pool else None
    # 2x2 stride-2 max-pool of relu(conv + bias) read straight from the GEMM's output, eight
    # (or four) windows per vector step, when no full-size plane is wanted
    pool_2x2 = bool(pool_geo and relu and direct and plane_out is None and ct == "float" and
                    pool_geo["inside"] and pool_geo["OW"] >= 4 and
                    all(pool_geo[k] == v for k, v in (("KH", 2), ("KW", 2), ("SH", 2),
                                                      ("SW", 2), ("DH", 1), ("DW", 1))))
    if direct:
        work = geo["O"] // geo["G"] * geo["OH"] * direct["WP"] + \
            (t["CG"] * direct["HP"] * direct["WP"] if direct["padded"] else 0)
    else:
        work = t["CG"] * geo["KH"] * geo["KW"] * geo["OH"] * geo["OW"]
    per_thread = work + plane * 2
    parallel = target.parallel.compute(_conv_flops(geo), geo["N"])
    src = render("conv2d.c.j2", name=name, node_lines=node_lines(group), ctype=ct,
                 sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 has_bias=len(conv.inputs) > 2, plane_out=plane_out, relu=relu is not None,
                 relu_out=relu_out, relu_scratch=relu_scratch,
                 pool=pool_geo, pool_2x2=pool_2x2,
                 pool_idx=pool is not None and pool.outputs[1] in exported, geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread,
                 work_elems=work, direct=bool(direct), **(direct or {}), **geo)
    return Kernel(name, reads, writes, src, threads_scratch(per_thread, parallel), ct,
                  flops=_conv_flops(geo), parallel=parallel)


def _lower_conv_backward_input(name, node, target):
    gy, w = node.inputs
    out = node.outputs[0]
    geo = _conv_grad_geometry(node, out.shape, w.shape, gy.shape)
    ct = ctype(out)
    t = _conv_template_geo(geo, ct)
    direct = _direct_geometry(geo)
    if direct:
        per_thread = _gradient_work(geo, direct)
    else:
        per_thread = t["CG"] * geo["KH"] * geo["KW"] * geo["OH"] * geo["OW"]
    parallel = target.parallel.compute(_conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    src = render("conv_backward_input.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct), geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread,
                 direct=bool(direct), **(direct or {}), **geo)
    return Kernel(name, reads, writes, src, threads_scratch(per_thread, parallel), ct,
                  flops=_conv_flops(geo), parallel=parallel)


def _lower_conv_backward_weight(name, node, target):
    gy, x = node.inputs
    out = node.outputs[0]
    geo = _conv_grad_geometry(node, x.shape, out.shape, gy.shape)
    ct = ctype(out)
    t = _conv_template_geo(geo, ct)
    wsize = numel(out.shape)
    direct = _direct_geometry(geo)
    if direct:
        work = _gradient_work(geo, direct)
    else:
        work = t["CG"] * geo["KH"] * geo["KW"] * geo["OH"] * geo["OW"]
    per_thread = work + wsize
    parallel = target.parallel.compute(_conv_flops(geo), geo["N"])
    reads, writes = [("gy", gy), ("x", x)], [("out", out)]
    src = render("conv_backward_weight.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct), geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread, work_elems=work,
                 max_threads="TN_MAX_THREADS", direct=bool(direct), **(direct or {}), **geo)
    return Kernel(name, reads, writes, src, threads_scratch(per_thread, parallel), ct,
                  flops=_conv_flops(geo), parallel=parallel)



# --- 3-d ----------------------------------------------------------------------------------------


def _conv3d_geometry(x_shape, w_shape, y_shape, attrs):
    st, pd, dl = attrs["stride"], attrs["padding"], attrs["dilation"]
    g = attrs["groups"]
    return dict(N=x_shape[0], C=x_shape[1], ID=x_shape[2], IH=x_shape[3], IW=x_shape[4],
                O=w_shape[0], CG=w_shape[1], OG=w_shape[0] // g, KD=w_shape[2], KH=w_shape[3],
                KW=w_shape[4], OD=y_shape[2], OH=y_shape[3], OW=y_shape[4], SD=st[0],
                SH=st[1], SW=st[2], PD=pd[0], PH=pd[1], PW=pd[2], DD=dl[0], DH=dl[1],
                DW=dl[2], G=g)


def _conv3d_flops(geo):
    return 2 * geo["N"] * geo["O"] * geo["CG"] * geo["KD"] * geo["KH"] * geo["KW"] * \
        geo["OD"] * geo["OH"] * geo["OW"]


def _lower_conv3d_group(name, group, exported, target):
    conv = group[0]
    relu = next((m for m in group if m.op == "relu"), None)
    pool = next((m for m in group if m.op == "max_pool"), None)
    x, w = conv.inputs[0], conv.inputs[1]
    conv_v = conv.outputs[0]
    geo = _conv3d_geometry(x.shape, w.shape, conv_v.shape, conv.attrs)
    ct = ctype(conv_v)
    reads = [("x", x), ("w", w)]
    if len(conv.inputs) > 2:
        reads.append(("b", conv.inputs[2]))
    writes = []
    last = relu.outputs[0] if relu is not None else conv_v
    conv_dst = relu_dst = None
    if conv_v in exported or (pool is None and relu is None):
        writes.append(("conv_out", conv_v))
        conv_dst = "conv_out"
    if relu is not None and (relu.outputs[0] in exported or pool is None):
        writes.append(("relu_out", relu.outputs[0]))
        relu_dst = "relu_out"
    pool_kernel = None
    scratch = 0
    if pool is not None:
        # the pooling input is whatever the conv part wrote last, or scratch
        pool_kernel = lower_max_pool(f"{name}_pool", pool, exported, target)
        if pool_kernel.scratch:
            raise LoweringError(f"max pooling fused after a 3-d convolution cannot use scratch "
                                f"memory{where(pool)}")
        pool_in = relu_dst if relu is not None else conv_dst
        if pool_in is None:
            scratch = numel(last.shape)
            pool_in = "scratch"
            if relu is not None:
                relu_dst = "scratch"
            else:
                conv_dst = "scratch"
        pool_writes = [(f"pool_{role}", v) for role, v in pool_kernel.writes]
        writes += pool_writes
        pool_call = f"{name}_pool({pool_in}, " + ", ".join(r for r, _ in pool_writes) + ");"
    parallel = target.parallel.compute(_conv3d_flops(geo))
    src = render("vision_conv3d.c.j2", name=name, node_lines=node_lines(group), ctype=ct,
                 acctype="double", signature=signature(reads, writes, scratch, ct),
                 conv_signature=signature(reads, []) + f", {ct} *conv_dst, {ct} *relu_dst",
                 has_bias=len(conv.inputs) > 2, conv_dst=conv_dst or "NULL",
                 relu_dst=relu_dst or "NULL", relu=relu is not None, g=geo, parallel=parallel,
                 pool_source=pool_kernel.source if pool_kernel else None,
                 pool_call=pool_call if pool_kernel else None)
    return Kernel(name, reads, writes, src, scratch, ct, flops=_conv3d_flops(geo),
                  parallel=parallel or bool(pool_kernel and pool_kernel.parallel))


def _lower_conv3d_backward_input(name, node, target):
    gy, w = node.inputs
    out = node.outputs[0]
    geo = _conv3d_geometry(out.shape, w.shape, gy.shape, node.attrs)
    ct = ctype(out)
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    parallel = target.parallel.compute(_conv3d_flops(geo))
    src = render("vision_conv3d_backward_input.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, acctype="double", signature=signature(reads, writes), g=geo,
                 parallel=parallel)
    return Kernel(name, reads, writes, src, flops=_conv3d_flops(geo), parallel=parallel)


def _lower_conv3d_backward_weight(name, node, target):
    gy, x = node.inputs
    out = node.outputs[0]
    geo = _conv3d_geometry(x.shape, out.shape, gy.shape, node.attrs)
    ct = ctype(out)
    reads, writes = [("gy", gy), ("x", x)], [("out", out)]
    parallel = target.parallel.compute(_conv3d_flops(geo))
    src = render("vision_conv3d_backward_weight.c.j2", name=name,
                 node_lines=node_lines([node]), ctype=ct, acctype="double",
                 signature=signature(reads, writes), g=geo, parallel=parallel)
    return Kernel(name, reads, writes, src, flops=_conv3d_flops(geo), parallel=parallel)


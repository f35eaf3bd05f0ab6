"""Lowering: one IR node (or fused group) -> one C kernel rendered from a Jinja template.

Each lowering returns a ``Kernel``: the rendered function, the IR values it reads and writes (in
parameter order) and how much scratch memory it needs. Views and detach emit no kernel; the
memory plan lets them share their input's buffer.
"""
import os

import numpy as np

from ..ir.printer import _node_line
from ..ops.common import numel
from .templates import render

CTYPE = {"f32": "float", "f64": "double", "i64": "int64_t", "b8": "uint8_t"}
ALIAS_OPS = {"view", "detach"}


class LoweringError(NotImplementedError):
    """An op that has no C lowering."""


# op name -> function(kernel name, node, exported values) -> Kernel: lowerings that live in
# tracenet/codegen/lowerings/ register here, so adding an op's C code touches no dispatch table
LOWERINGS = {}


def lowering(*ops):
    """Decorator registering a lowering for (unfused) nodes of the given ops."""
    def wrap(fn):
        for op in ops:
            if op in LOWERINGS:
                raise ValueError(f"op {op!r} has two C lowerings")
            LOWERINGS[op] = fn
        return fn
    return wrap


def ctype(value):
    return CTYPE[value.dtype.short]


class Kernel:
    def __init__(self, name, reads, writes, source, scratch=0, scratch_ctype="float", flops=0,
                 parallel=False, helpers=()):
        self.name = name
        self.reads = reads          # [(role, Value)]
        self.writes = writes        # [(role, Value)]
        self.source = source
        # elements of scratch_ctype the kernel needs, or (per thread, "threads") for kernels
        # that give each OpenMP thread its own slice
        self.scratch = scratch
        self.scratch_ctype = scratch_ctype
        self.flops = flops          # for GFLOP/s under TRACENET_DEBUG=time
        self.parallel = parallel
        # [(name, source)] of functions several kernels share: emitted once per translation unit
        self.helpers = list(helpers)

    def signature(self):
        return signature(self.reads, self.writes, self.scratch, self.scratch_ctype)


def signature(reads, writes, scratch=0, scratch_ctype="float"):
    parts = [f"const {ctype(v)} *restrict {role}" for role, v in reads]
    parts += [f"{ctype(v)} *restrict {role}" for role, v in writes]
    if scratch:
        parts.append(f"{scratch_ctype} *restrict scratch")
    return ", ".join(parts) or "void"


def node_lines(nodes):
    lines = []
    for n in nodes:
        line = _node_line(n, "")
        lines.append(line.replace("*/", "* /"))
    return lines


def where(node):
    if node.loc:
        return f" (traced at {os.path.basename(node.loc[0])}:{node.loc[1]})"
    return ""


# --- elementwise --------------------------------------------------------------------------------


def _fmt_float(v, ct):
    if ct == "float":
        return f"{float(v)!r}f".replace("inff", "INFINITY").replace("nanf", "NAN")
    return repr(float(v)).replace("inf", "INFINITY").replace("nan", "NAN")


def _scalar(v, ct):
    if ct in ("float", "double"):
        return f"(({ct}){_fmt_float(v, ct)})"
    return f"(({ct}){int(v)})"


def _pow_scalar(args, attrs, ct):
    (a,), e = args, attrs["exponent"]
    if e == 2:
        return f"({a} * {a})"
    if e == 3:
        return f"({a} * {a} * {a})"
    if e == 1:
        return a
    if e == 0.5:
        return f"sqrt({a})"
    if e == -1:
        return f"(1 / {a})"
    return f"pow({a}, {_scalar(e, ct)})"


def _clamp(args, attrs, ct):
    (a,), lo, hi = args, attrs["min"], attrs["max"]
    expr = a
    if lo is not None:
        expr = f"({expr} < {_scalar(lo, ct)} ? {_scalar(lo, ct)} : {expr})"
    if hi is not None:
        expr = f"({expr} > {_scalar(hi, ct)} ? {_scalar(hi, ct)} : {expr})"
    return expr


def _cast(args, attrs, ct):
    if ct == "uint8_t":
        return f"({args[0]} != 0)"
    return f"(({ct}){args[0]})"


# C expression of each elementwise op; args are C expressions of the inputs, ct the result type
C_EXPR = {
    "add": lambda a, at, ct: f"({a[0]} + {a[1]})",
    "sub": lambda a, at, ct: f"({a[0]} - {a[1]})",
    "mul": lambda a, at, ct: f"({a[0]} * {a[1]})",
    "div": lambda a, at, ct: f"(({ct}){a[0]} / ({ct}){a[1]})",
    "neg": lambda a, at, ct: f"(-{a[0]})",
    "exp": lambda a, at, ct: f"exp({a[0]})",
    "log": lambda a, at, ct: f"log({a[0]})",
    "log2": lambda a, at, ct: f"log2({a[0]})",
    "log1p": lambda a, at, ct: f"log1p({a[0]})",
    "expm1": lambda a, at, ct: f"expm1({a[0]})",
    "sqrt": lambda a, at, ct: f"sqrt({a[0]})",
    "rsqrt": lambda a, at, ct: f"(({ct})1 / sqrt(({ct}){a[0]}))",
    "reciprocal": lambda a, at, ct: f"(({ct})1 / ({ct}){a[0]})",
    "tanh": lambda a, at, ct: f"tanh({a[0]})",
    "sigmoid": lambda a, at, ct: f"(1 / (1 + exp(-{a[0]})))",
    "sin": lambda a, at, ct: f"sin({a[0]})",
    "cos": lambda a, at, ct: f"cos({a[0]})",
    "abs": lambda a, at, ct: f"fabs({a[0]})" if ct in ("float", "double") else
    f"({a[0]} < 0 ? -{a[0]} : {a[0]})",
    "sign": lambda a, at, ct: f"(({ct})(({a[0]} > 0) - ({a[0]} < 0)))",
    "relu": lambda a, at, ct: f"({a[0]} <= 0 ? 0 : {a[0]})",
    "threshold_backward": lambda a, at, ct: f"({a[1]} > {_scalar(at['threshold'], ct)} ? "
                                            f"{a[0]} : 0)",
    "pow_scalar": lambda a, at, ct: _pow_scalar(a, at, ct),
    "pow": lambda a, at, ct: f"pow({a[0]}, {a[1]})",
    "maximum": lambda a, at, ct: f"(({a[0]} != {a[0]} || {a[0]} > {a[1]}) ? {a[0]} : {a[1]})",
    "minimum": lambda a, at, ct: f"(({a[0]} != {a[0]} || {a[0]} < {a[1]}) ? {a[0]} : {a[1]})",
    "clamp": _clamp,
    "where": lambda a, at, ct: f"({a[0]} ? {a[1]} : {a[2]})",
    "to_dtype": _cast,
    "clone": lambda a, at, ct: a[0],
    "expand": lambda a, at, ct: a[0],
    "eq": lambda a, at, ct: f"({a[0]} == {a[1]})",
    "ne": lambda a, at, ct: f"({a[0]} != {a[1]})",
    "lt": lambda a, at, ct: f"({a[0]} < {a[1]})",
    "le": lambda a, at, ct: f"({a[0]} <= {a[1]})",
    "gt": lambda a, at, ct: f"({a[0]} > {a[1]})",
    "ge": lambda a, at, ct: f"({a[0]} >= {a[1]})",
    "logical_and": lambda a, at, ct: f"({a[0]} && {a[1]})",
    "logical_or": lambda a, at, ct: f"({a[0]} || {a[1]})",
    "logical_xor": lambda a, at, ct: f"(!{a[0]} != !{a[1]})",
    "logical_not": lambda a, at, ct: f"(!{a[0]})",
    "floor": lambda a, at, ct: f"floor({a[0]})",
    "ceil": lambda a, at, ct: f"ceil({a[0]})",
    "trunc": lambda a, at, ct: f"trunc({a[0]})",
    "round": lambda a, at, ct: f"nearbyint({a[0]})",
    "isnan": lambda a, at, ct: f"({a[0]} != {a[0]})",
}


def _broadcast_index(in_shape, out_shape):
    """C expression for the flat index into an input of ``in_shape`` read at output index i."""
    in_shape, out_shape = tuple(in_shape), tuple(out_shape)
    if in_shape == out_shape:
        return "i"
    if numel(in_shape) == 1:
        return "0"
    nd = len(out_shape)
    in_shape = (1,) * (nd - len(in_shape)) + in_shape
    out_strides = [numel(out_shape[d + 1:]) for d in range(nd)]
    in_strides = [numel(in_shape[d + 1:]) for d in range(nd)]
    terms = []
    for d in range(nd):
        if in_shape[d] == 1:
            continue
        term = f"i / {out_strides[d]}" if out_strides[d] != 1 else "i"
        if d > 0:
            term = f"({term}) % {out_shape[d]}"
        terms.append(f"({term}) * {in_strides[d]}" if in_strides[d] != 1 else f"({term})")
    return " + ".join(terms) or "0"


def lower_elementwise(name, members, inputs, outputs):
    shape = members[-1].outputs[0].shape
    reads = [(f"in{j}", v) for j, v in enumerate(inputs)]
    writes = [(f"out{j}", v) for j, v in enumerate(outputs)]
    expr_of = {}
    for role, v in reads:
        expr_of[v] = f"{role}[{_broadcast_index(v.shape, shape)}]"
    lines = []
    for k, node in enumerate(members):
        if node.op not in C_EXPR:
            raise LoweringError(f"op '{node.op}' has no C lowering{where(node)}; run this model "
                                "in eager mode")
        v = node.outputs[0]
        ct = ctype(v)
        args = [expr_of[x] for x in node.inputs]
        tmp = f"t{k}"
        lines.append(f"const {ct} {tmp} = {C_EXPR[node.op](args, node.attrs, ct)};")
        expr_of[v] = tmp
    for role, v in writes:
        lines.append(f"{role}[i] = {expr_of[v]};")
    src = render("elementwise.c.j2", name=name, signature=signature(reads, writes),
                 node_lines=node_lines(members), numel=numel(shape), shape=shape, lines=lines)
    return Kernel(name, reads, writes, src)


# --- convolution / pooling ------------------------------------------------------------------


def _conv_geometry(conv):
    x, w = conv.inputs[0], conv.inputs[1]
    return _conv_grad_geometry(conv, x.shape, w.shape, conv.outputs[0].shape)


def _pool_geometry(pool, ih, iw):
    a = pool.attrs
    nsp = len(a["kernel"])
    if nsp > 2:
        raise LoweringError(f"{nsp}-d max pooling has no C lowering yet{where(pool)}")
    pad1 = (lambda t, fill: (fill,) * (2 - nsp) + tuple(t))
    k, s, p, d = (pad1(a["kernel"], 1), pad1(a["stride"], 1), pad1(a["padding"], 0),
                  pad1(a["dilation"], 1))
    o = pad1(pool.outputs[0].shape[2:], 1)
    # every window lies inside the image (no padding, no ceil-mode overhang)
    inside = (p[0] == 0 and p[1] == 0 and (o[0] - 1) * s[0] + (k[0] - 1) * d[0] < ih and
              (o[1] - 1) * s[1] + (k[1] - 1) * d[1] < iw)
    return dict(KH=k[0], KW=k[1], SH=s[0], SW=s[1], PH=p[0], PW=p[1], DH=d[0], DW=d[1],
                IH=ih, IW=iw, OH=o[0], OW=o[1], inside=inside)


SFX = {"float": "_f32", "double": "_f64"}
MAX_THREADS = 16  # per-thread scratch is reserved for at most this many OpenMP threads
PARALLEL_MIN_FLOPS = 500_000  # below this, a fork/join costs more than it saves
# a GEMM splits its rows between threads from here on: below it, moving half of the result
# into the other core's cache costs the serial kernel that reads it more than the split saves
# (measured on LeNet's fully connected layers, batch 8 against 64)
GEMM_PARALLEL_MIN_FLOPS = 2_000_000


def openmp_available():
    from ..runtime import toolchain
    return bool(toolchain.openmp_flags())


def _conv_template_geo(geo, ct):
    g = dict(geo)
    g["CG"] = geo["C"] // geo["G"]
    g["ctype"] = ct
    return g


def _parallel(geo, flops):
    return int(geo["N"] > 1 and flops >= PARALLEL_MIN_FLOPS and openmp_available())


def _conv_flops(geo):
    return 2 * geo["N"] * geo["O"] * (geo["C"] // geo["G"]) * geo["KH"] * geo["KW"] * \
        geo["OH"] * geo["OW"]


def lower_conv_group(name, members, exported):
    conv = members[0]
    relu = next((m for m in members if m.op == "relu"), None)
    pool = next((m for m in members if m.op == "max_pool"), None)
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
    pool_geo = _pool_geometry(pool, geo["OH"], geo["OW"]) if pool else None
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
    parallel = _parallel(geo, _conv_flops(geo))
    src = render("conv2d.c.j2", name=name, node_lines=node_lines(members), ctype=ct,
                 sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 has_bias=len(conv.inputs) > 2, plane_out=plane_out, relu=relu is not None,
                 relu_out=relu_out, relu_scratch=relu_scratch,
                 pool=pool_geo, pool_2x2=pool_2x2,
                 pool_idx=pool is not None and pool.outputs[1] in exported, geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread,
                 work_elems=work, direct=bool(direct), **(direct or {}), **geo)
    return Kernel(name, reads, writes, src, _threads_scratch(per_thread, parallel), ct,
                  flops=_conv_flops(geo), parallel=parallel)


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


def _threads_scratch(per_thread, parallel):
    return (per_thread, "threads") if parallel else per_thread


def lower_max_pool(name, node, exported):
    x = node.inputs[0]
    shape = x.shape
    ih, iw = (shape[2], shape[3]) if len(shape) == 4 else (1, shape[2])
    reads = [("x", x)]
    writes = [("out", node.outputs[0])]
    with_idx = node.outputs[1] in exported
    if with_idx:
        writes.append(("idx", node.outputs[1]))
    src = render("max_pool.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 signature=signature(reads, writes), NC=shape[0] * shape[1],
                 pool=_pool_geometry(node, ih, iw), with_idx=with_idx)
    return Kernel(name, reads, writes, src)


def lower_max_pool_backward(name, node):
    g, idx = node.inputs
    out = node.outputs[0]
    nc = out.shape[0] * out.shape[1]
    reads, writes = [("g", g), ("idx", idx)], [("out", out)]
    src = render("max_pool_backward.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), signature=signature(reads, writes), NC=nc,
                 IN=numel(out.shape[2:]), ON=numel(g.shape[2:]))
    return Kernel(name, reads, writes, src)


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


def lower_conv_backward_input(name, node):
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
    parallel = _parallel(geo, _conv_flops(geo))
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    src = render("conv_backward_input.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct), geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread,
                 direct=bool(direct), **(direct or {}), **geo)
    return Kernel(name, reads, writes, src, _threads_scratch(per_thread, parallel), ct,
                  flops=_conv_flops(geo), parallel=parallel)


def lower_conv_backward_weight(name, node):
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
    parallel = _parallel(geo, _conv_flops(geo))
    reads, writes = [("gy", gy), ("x", x)], [("out", out)]
    src = render("conv_backward_weight.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct), geo=t,
                 CG=t["CG"], parallel=parallel, scratch_per_thread=per_thread, work_elems=work,
                 max_threads="TN_MAX_THREADS", direct=bool(direct), **(direct or {}), **geo)
    return Kernel(name, reads, writes, src, _threads_scratch(per_thread, parallel), ct,
                  flops=_conv_flops(geo), parallel=parallel)


# --- gemm ------------------------------------------------------------------------------------


def lower_gemm_group(name, members, exported):
    g = members[0]
    if g.op != "gemm":
        raise LoweringError(f"op '{g.op}' should have been rewritten to gemm{where(g)}")
    act_node = next((m for m in members[1:] if m.op in ("relu", "tanh", "sigmoid")), None)
    mask_node = next((m for m in members[1:] if m.op == "threshold_backward"), None)
    add_node = next((m for m in members[1:] if m.op == "add"), None)
    sgd_node = next((m for m in members[1:] if m.op == "sgd_step"), None)
    a, b = g.inputs[0], g.inputs[1]
    ta, tb = g.attrs["trans_a"], g.attrs["trans_b"]
    m, k = (a.shape[1], a.shape[0]) if ta else a.shape
    n = b.shape[0] if tb else b.shape[1]
    reads = [("a", a), ("b", b)]
    bias = None
    beta = g.attrs["beta"]
    if len(g.inputs) > 2:
        bias = g.inputs[2]
    elif add_node is not None:
        bias = add_node.inputs[1] if add_node.inputs[0] is g.outputs[0] else add_node.inputs[0]
        beta = 1.0
    if bias is not None:
        reads.append(("c", bias))
    if mask_node is not None:
        reads.append(("mask", mask_node.inputs[1]))
    last = g.outputs[0] if sgd_node is not None else members[-1].outputs[0]
    writes = [("out", last)]
    sgd_helper = None
    if sgd_node is not None:  # the update of the parameter whose gradient this is
        reads += [("p", sgd_node.inputs[0]), ("buf", sgd_node.inputs[2]),
                  ("h", sgd_node.inputs[3])]
        writes += [("p_out", sgd_node.outputs[0]), ("buf_out", sgd_node.outputs[1])]
        sgd_helper = _update_helper("sgd_update", ctype(last),
                                    maximize=sgd_node.attrs["maximize"],
                                    nesterov=sgd_node.attrs["nesterov"])
    pre = None
    if act_node is not None:
        pre_v = act_node.inputs[0]
        if pre_v in exported:
            pre = pre_v
            writes.append(("pre", pre_v))
    bias_index = None
    if bias is not None:
        bs = (1,) * (2 - len(bias.shape)) + tuple(bias.shape)
        bias_index = {(1, 1): "0", (1, n): "j", (m, 1): "i"}.get(
            bs, f"(size_t)i * {n} + j")
    ct = ctype(last)
    scratch = k * n if (tb and ta) else 0
    flops = 2 * m * n * k
    parallel = int(flops >= GEMM_PARALLEL_MIN_FLOPS and m >= 12 and openmp_available())
    row_block = max(6, -(-m // 12) * 6) if parallel else max(m, 1)
    if sgd_node is not None and not parallel:
        row_block = min(row_block, max(6, 4096 // max(n, 1) // 6 * 6))  # rows that stay in L1
    act = act_node.op if act_node is not None else None
    src = render("gemm.c.j2", name=name, node_lines=node_lines(members), ctype=ct,
                 sfx=SFX[ct], signature=signature(reads, writes, scratch, ct), M=m, N=n, K=k,
                 trans_a=ta, trans_b=tb, alpha=g.attrs["alpha"], beta=beta,
                 bias=bias is not None, bias_index=bias_index, act=act,
                 pre_act_out=pre is not None, parallel=parallel, row_block=row_block,
                 mask=_fmt_float(mask_node.attrs["threshold"], ct) if mask_node else None,
                 epilogue=bias is not None or act is not None or g.attrs["alpha"] != 1.0 or
                 mask_node is not None, sgd=sgd_helper[0] if sgd_helper else None)
    return Kernel(name, reads, writes, src, scratch, ct, flops=flops, parallel=parallel,
                  helpers=[sgd_helper] if sgd_helper else ())


def lower_matvec(name, node):
    """mv (matrix @ vector) and dot (vector . vector)."""
    a, v = node.inputs
    out = node.outputs[0]
    rows = a.shape[0] if node.op == "mv" else 0
    reads, writes = [("a", a), ("v", v)], [("out", out)]
    src = render("matvec.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(out),
                 signature=signature(reads, writes), rows=rows, K=v.shape[0])
    return Kernel(name, reads, writes, src, flops=2 * max(rows, 1) * v.shape[0])


# --- reductions and data movement --------------------------------------------------------------


def _offset_expr(shape, names):
    strides = [numel(shape[d + 1:]) for d in range(len(shape))]
    terms = [f"{names[d]} * {strides[d]}" if strides[d] != 1 else names[d]
             for d in range(len(shape)) if shape[d] != 1]
    return " + ".join(terms) or "0"


_REDUCE = {
    "sum": ("0", "acc += v;", "acc"),
    "mean": ("0", "acc += v;", "acc / {count}"),
    "amax": ("-INFINITY", "if (v > acc || v != v) acc = v;", "acc"),
    "amin": ("INFINITY", "if (v < acc || v != v) acc = v;", "acc"),
}


_UPDATE_OUT = {"sum": "*a += v;", "mean": "*a += v;",
               "amax": "if (v > *a || v != v) *a = v;", "amin": "if (v < *a || v != v) *a = v;"}


def lower_reduce(name, node):
    x = node.inputs[0]
    out = node.outputs[0]
    dims = tuple(node.attrs["dims"])
    shape = tuple(x.shape)
    kept = [d for d in range(len(shape)) if d not in dims]
    init, update, finish = _REDUCE[node.op]
    count = numel(shape[d] for d in dims)
    out_ct = ctype(out)
    acc = "double" if out_ct == "double" else out_ct
    if not x.dtype.is_floating_point:
        acc = "int64_t"
        if node.op in ("amax", "amin"):
            init = "INT64_MIN" if node.op == "amax" else "INT64_MAX"
    in_order = bool(shape) and (len(shape) - 1) in kept and bool(dims) and \
        x.dtype.is_floating_point
    names = [f"k{d}" if d in kept else f"r{d}" for d in range(len(shape))]
    kept_shape = [shape[d] for d in kept]
    out_offset = _offset_expr(kept_shape, [names[d] for d in kept])
    reads, writes = [("x", x)], [("out", out)]
    src = render("reduce.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 out_ctype=out_ct, acctype=acc, signature=signature(reads, writes),
                 kind=node.op, in_shape=shape, dims=dims, kept=kept, init=init, update=update,
                 finish=finish.format(count=f"({acc}){count}"), in_order=in_order,
                 names=names, out_offset=out_offset, out_numel=numel(out.shape),
                 update_out=_UPDATE_OUT[node.op], count=count,
                 offset=_offset_expr(shape, names))
    return Kernel(name, reads, writes, src)


def lower_permute(name, node):
    x, out = node.inputs[0], node.outputs[0]
    dims = node.attrs["dims"]
    in_shape = tuple(x.shape)
    # output loop variable d walks input dim dims[d]
    names = [None] * len(in_shape)
    for d, src in enumerate(dims):
        names[src] = f"i{d}"
    reads, writes = [("x", x)], [("out", out)]
    src = render("permute.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), out_shape=tuple(out.shape),
                 offset=_offset_expr(in_shape, names))
    return Kernel(name, reads, writes, src)


# --- softmax and losses ------------------------------------------------------------------


def lower_softmax(name, node):
    x, out = node.inputs[0], node.outputs[0]
    dim = node.attrs["dim"]
    shape = tuple(x.shape)
    reads, writes = [("x", x)], [("out", out)]
    src = render("softmax.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 acctype="double", signature=signature(reads, writes),
                 log=node.op == "log_softmax", D=shape[dim] if shape else 1,
                 OUTER=numel(shape[:dim]), INNER=numel(shape[dim + 1:]))
    return Kernel(name, reads, writes, src)


def _nll_layout(x_shape):
    if len(x_shape) == 1:
        return 1, x_shape[0], 1
    return x_shape[0], x_shape[1], numel(x_shape[2:])


def lower_nll_loss(name, node):
    x, t = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    reads = [("x", x), ("target", t)]
    if len(node.inputs) > 2:
        reads.append(("weight", node.inputs[2]))
    writes = [("out", out)]
    n, c, d = _nll_layout(tuple(x.shape))
    src = render("nll_loss.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(x),
                 acctype="double", signature=signature(reads, writes), N=n, C=c, D=d,
                 weighted=len(node.inputs) > 2, reduction=node.attrs["reduction"],
                 ignore_index=int(node.attrs["ignore_index"]))
    return Kernel(name, reads, writes, src)


def lower_nll_loss_backward(name, node):
    g, t = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    reads = [("g", g), ("target", t)]
    if len(node.inputs) > 2:
        reads.append(("weight", node.inputs[2]))
    writes = [("out", out)]
    n, c, d = _nll_layout(tuple(out.shape))
    src = render("nll_loss_backward.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ctype(out), acctype="double", signature=signature(reads, writes),
                 N=n, C=c, D=d, weighted=len(node.inputs) > 2,
                 reduction=node.attrs["reduction"], ignore_index=int(node.attrs["ignore_index"]))
    return Kernel(name, reads, writes, src)


def lower_mse_loss(name, node):
    a, b = node.inputs
    out = node.outputs[0]
    if tuple(a.shape) != tuple(b.shape):
        raise LoweringError(f"mse_loss with broadcasting operands has no C lowering{where(node)}")
    reads, writes = [("a", a), ("b", b)], [("out", out)]
    src = render("mse_loss.c.j2", name=name, node_lines=node_lines([node]), ctype=ctype(out),
                 acctype="double", signature=signature(reads, writes), numel=numel(a.shape),
                 reduction=node.attrs["reduction"])
    return Kernel(name, reads, writes, src)


# --- fused backward of conv -> relu -> max_pool -----------------------------------------------


def lower_pool_relu_backward(name, members, exported):
    thr, mpb = members[:2]  # mask the pooled gradient, then scatter it
    bias = members[2] if len(members) > 2 else None
    g, y = thr.inputs
    idx = mpb.inputs[1]
    out = mpb.outputs[0]
    n, c = out.shape[0], out.shape[1]
    reads = [("g", g), ("idx", idx), ("y", y)]
    writes = [("out", out)]
    if bias is not None:
        writes.append(("bias_out", bias.outputs[0]))
    flops = numel(out.shape) * 3
    parallel = int(n * numel(out.shape[1:]) >= 100_000 and c > 1 and openmp_available())
    src = render("pool_relu_backward.c.j2", name=name, node_lines=node_lines(members),
                 ctype=ctype(out), acctype="double", signature=signature(reads, writes),
                 N=n, C=c, IN=numel(out.shape[2:]), ON=numel(g.shape[2:]),
                 threshold=_fmt_float(thr.attrs["threshold"], ctype(out)), bias=bias is not None,
                 parallel=parallel)
    return Kernel(name, reads, writes, src, flops=flops, parallel=parallel)


# --- optimizer steps ----------------------------------------------------------------------


def _update_helper(template, ct, **flags):
    """(name, source) of the shared update loop for element type ``ct`` and compile-time
    ``flags``."""
    name = f"tn_{template}{SFX[ct]}_" + "_".join(f"{k}{int(bool(v))}"
                                                 for k, v in sorted(flags.items()))
    return name, render(f"{template}.c.j2", helper=name, ctype=ct, **flags)


def lower_sgd_step(name, node):
    p, g, buf, h = node.inputs
    reads = [("p", p), ("g", g), ("buf", buf), ("h", h)]
    writes = [("p_out", node.outputs[0]), ("buf_out", node.outputs[1])]
    helper = _update_helper("sgd_update", ctype(p), maximize=node.attrs["maximize"],
                            nesterov=node.attrs["nesterov"])
    src = render("sgd_step.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), numel=numel(p.shape), helper=helper[0])
    return Kernel(name, reads, writes, src, helpers=[helper])


def lower_adam_step(name, node):
    p, g, m, v, vmax, h = node.inputs
    reads = [("p", p), ("g", g), ("m", m), ("v", v), ("vmax", vmax), ("h", h)]
    writes = [("p_out", node.outputs[0]), ("m_out", node.outputs[1]),
              ("v_out", node.outputs[2]), ("vmax_out", node.outputs[3])]
    helper = _update_helper("adam_update", ctype(p), maximize=node.attrs["maximize"],
                            decoupled=node.attrs["decoupled"], amsgrad=node.attrs["amsgrad"])
    src = render("adam_step.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), numel=numel(p.shape), helper=helper[0])
    return Kernel(name, reads, writes, src, helpers=[helper])


OPTIMIZER_KERNELS = {"sgd_step": lower_sgd_step, "adam_step": lower_adam_step}


def lower_node(name, node, exported):
    """Kernel for a top-level node (fused or not); None for ops that only alias memory."""
    if node.op in ALIAS_OPS:
        return None
    if all(numel(v.shape) == 0 for v in node.outputs):
        return None  # nothing to compute: empty outputs
    conv = node.members[0] if node.op == "fused" else node
    if conv.op in ("convolution", "conv_backward_input", "conv_backward_weight") and \
            len(conv.attrs["stride"]) == 3:
        from .lowerings.vision import lower_conv3d  # 3-d convolutions (fused or not)
        return lower_conv3d(name, node, exported)
    if node.op == "fused":
        kind = node.attrs["kind"]
        if kind.startswith("conv"):
            return lower_conv_group(name, node.members, set(exported))
        if any(m.op == "max_pool_backward" for m in node.members):
            return lower_pool_relu_backward(name, node.members, set(exported))
        if kind == "elementwise":
            return lower_elementwise(name, node.members, node.inputs, node.outputs)
        return lower_gemm_group(name, node.members, set(exported))
    if node.op in LOWERINGS:
        return LOWERINGS[node.op](name, node, set(exported))
    if node.op == "convolution":
        return lower_conv_group(name, [node], set(node.outputs))
    if node.op == "gemm":
        return lower_gemm_group(name, [node], set(node.outputs))
    if node.op in C_EXPR:
        return lower_elementwise(name, [node], node.inputs, node.outputs)
    if node.op == "max_pool":
        return lower_max_pool(name, node, set(exported))
    if node.op == "max_pool_backward":
        return lower_max_pool_backward(name, node)
    if node.op == "conv_backward_input":
        return lower_conv_backward_input(name, node)
    if node.op == "conv_backward_weight":
        return lower_conv_backward_weight(name, node)
    if node.op in _REDUCE:
        return lower_reduce(name, node)
    if node.op == "permute":
        return lower_permute(name, node)
    if node.op in ("softmax", "log_softmax"):
        return lower_softmax(name, node)
    if node.op in ("mv", "dot"):
        return lower_matvec(name, node)
    if node.op == "nll_loss":
        return lower_nll_loss(name, node)
    if node.op == "nll_loss_backward":
        return lower_nll_loss_backward(name, node)
    if node.op == "mse_loss":
        return lower_mse_loss(name, node)
    if node.op in OPTIMIZER_KERNELS:
        return OPTIMIZER_KERNELS[node.op](name, node)
    raise LoweringError(f"op '{node.op}' has no C lowering{where(node)}; run this model in "
                        "eager mode (without tracenet.compile)")


from . import lowerings  # noqa: E402,F401  (registers the lowerings defined there)

"""C lowering of a linear layer's backward fused with its SGD update (fusion group
``weight_update``): the weight gradient ``dy^T @ x`` and the update of W, and, when the group has
one, the input gradient ``dy @ W`` (of the old W), optionally masked by a relu.

At a batch of one these are rank-one products, bound by memory traffic over W, its gradient and
its momentum buffer: one pass over W's rows does all of them (``templates/weight_update.c.j2``),
split between threads by blocks of rows. Otherwise (or when a symbolic batch is not one at run
time) the kernel calls the GEMM kernels of ``lowerings/gemm.py`` in turn."""
from ..base import Kernel, SFX, ctype, group_lowering, members, node_lines, signature, \
    threads_scratch
from ..templates import render
from ...ir.graph import Node
from ..._sym import is_one, is_one_or_symbol
from .elementwise import c_expr
from .gemm import lower_gemm
from .optim import update_helper


# rows of W a batch of one's pass takes at a time with an input gradient: acc (dx's partial
# sums) is loaded and stored once per that many rows instead of once per row
ROWS_AT_ONCE = 4


def _gemm_part(name, nodes, roles, target):
    """The GEMM kernel of some of the group's members (a fused node of group ``gemm``)."""
    part = Node("fused", [], {"group": "gemm", "roles": roles}, members=nodes)
    return lower_gemm(name, part, {nodes[-1].outputs[0]}, target)


def _call(kernel, role_of):
    """The C call of a part's kernel with the outer kernel's arguments."""
    args = [f"tn_{s}" for s in kernel.symbols]
    args += [role_of[v] for _, v in kernel.reads + kernel.writes]
    return f"{kernel.name}({', '.join(args)});"


@group_lowering("weight_update")
def lower_weight_update(name, node, exported, target):
    by_role = dict(zip(node.attrs["roles"], members(node)))
    dx_node, mask_node = by_role.get("input_grad"), by_role.get("mask")
    gemm, sgd = by_role["gemm"], by_role["update"]
    dy, x = gemm.inputs
    p, grad, buf, h = sgd.inputs
    ct = ctype(p)
    batch, rows, cols = dy.shape[0], p.shape[0], p.shape[1]
    reads = [("dy", dy), ("x", x), ("p", p), ("buf", buf), ("h", h)]
    writes = [("grad", gemm.outputs[0]), ("p_out", sgd.outputs[0]),
              ("buf_out", sgd.outputs[1])]
    parts = [_gemm_part(f"{name}_weight", [gemm, sgd], ["gemm", "update"], target)]
    dx = None
    if dx_node is not None:
        dx = (mask_node or dx_node).outputs[0]
        if mask_node is not None:
            reads.append(("mask", mask_node.inputs[1]))
        writes.append(("dx", dx))
        dx_members = [dx_node] + ([mask_node] if mask_node is not None else [])
        parts.insert(0, _gemm_part(f"{name}_input_grad", dx_members,
                                   ["gemm", "mask"][:len(dx_members)], target))
    role_of = {v: role for role, v in reads + writes}
    # the batch of one gets one pass over W's rows, compiled in where the batch may be one
    one = is_one_or_symbol(batch) and ct in ("float", "double") and \
        all(not k.scratch for k in parts)
    parallel = target.parallel.weight_update(rows * cols, rows) if one else 0
    helper = update_helper("sgd_update", ct, maximize=sgd.attrs["maximize"],
                           nesterov=sgd.attrs["nesterov"])
    scratch = threads_scratch(cols, parallel) if one and dx is not None else 0
    src = "\n".join(k.source for k in parts) + render(
        "weight_update.c.j2", name=name, node_lines=node_lines(members(node)), ctype=ct,
        signature=signature(reads, writes, scratch, ct), one=one,
        always_one=is_one(batch), batch=batch, M=rows, K=cols, parallel=parallel,
        sgd=helper[0], dx=dx is not None, R=ROWS_AT_ONCE,
        mask=c_expr(mask_node, ["v", "mask[j]"]) if mask_node is not None else None,
        calls=[_call(k, role_of) for k in parts])
    helpers = [h for k in parts for h in k.helpers]
    return Kernel(name, reads, writes, src, scratch, ct,
                  flops=sum(k.flops for k in parts), helpers=helpers,
                  parallel=bool(parallel) or any(k.parallel for k in parts))

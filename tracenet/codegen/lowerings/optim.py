"""C lowerings of the optimizer updates in a compiled training step (rmsprop_step,
adagrad_step). Each node becomes a small kernel calling its op's update loop
(``templates/<rule>_update.c.j2``), which is emitted once per translation unit for each element
type and set of compile-time flags (``kernels._update_helper``) and shared by every parameter.
(sgd_step and adam_step are lowered in kernels.py.)
"""
from ...ops.common import numel
from ..kernels import Kernel, _update_helper, ctype, lowering, node_lines, signature
from ..templates import render


def lower_update(name, node, rule, state_roles, flags):
    """The kernel of one update node ``op(p, g, *state, h) -> (p, *state)``: its update loop
    ``<rule>_update`` reads p, g, the state arrays (named by ``state_roles``) and h, and writes
    the updated parameter and state; ``flags`` are the node attributes compiled into it."""
    p, g, *state, h = node.inputs
    reads = [("p", p), ("g", g)] + list(zip(state_roles, state)) + [("h", h)]
    writes = [("p_out", node.outputs[0])] + [(f"{role}_out", v) for role, v in
                                              zip(state_roles, node.outputs[1:])]
    helper = _update_helper(f"{rule}_update", ctype(p), **{f: node.attrs[f] for f in flags})
    src = render("optim_step.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), numel=numel(p.shape), helper=helper[0],
                 args=[role for role, _ in reads + writes])
    return Kernel(name, reads, writes, src, helpers=[helper])


@lowering("rmsprop_step")
def lower_rmsprop_step(name, node, exported):
    return lower_update(name, node, "rmsprop", ("sq", "buf", "gavg"), ("centered", "maximize"))


@lowering("adagrad_step")
def lower_adagrad_step(name, node, exported):
    return lower_update(name, node, "adagrad", ("sum",), ("maximize",))

"""C lowerings of the optimizer updates of a compiled training step (``ops/optim_step.py``).
Each update loop is a shared helper (``templates/<optimizer>_update.c.j2``) emitted once per
translation unit, so a GEMM that computes a weight gradient can also call it on its rows."""
from ...ops.common import numel
from ..base import SFX, Kernel, ctype, lowering, node_lines, signature
from ..templates import render


def update_helper(template, ct, **flags):
    """(name, source) of the shared update loop for element type ``ct`` and compile-time
    ``flags``."""
    name = f"tn_{template}{SFX[ct]}_" + "_".join(f"{k}{int(bool(v))}"
                                                 for k, v in sorted(flags.items()))
    return name, render(f"{template}.c.j2", helper=name, ctype=ct, **flags)


@lowering("sgd_step")
def lower_sgd_step(name, node, exported, target):
    p, g, buf, h = node.inputs
    reads = [("p", p), ("g", g), ("buf", buf), ("h", h)]
    writes = [("p_out", node.outputs[0]), ("buf_out", node.outputs[1])]
    helper = update_helper("sgd_update", ctype(p), maximize=node.attrs["maximize"],
                            nesterov=node.attrs["nesterov"])
    src = render("sgd_step.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), numel=numel(p.shape), helper=helper[0])
    return Kernel(name, reads, writes, src, helpers=[helper])


@lowering("adam_step")
def lower_adam_step(name, node, exported, target):
    p, g, m, v, vmax, h = node.inputs
    reads = [("p", p), ("g", g), ("m", m), ("v", v), ("vmax", vmax), ("h", h)]
    writes = [("p_out", node.outputs[0]), ("m_out", node.outputs[1]),
              ("v_out", node.outputs[2]), ("vmax_out", node.outputs[3])]
    helper = update_helper("adam_update", ctype(p), maximize=node.attrs["maximize"],
                            decoupled=node.attrs["decoupled"], amsgrad=node.attrs["amsgrad"])
    src = render("adam_step.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), numel=numel(p.shape), helper=helper[0])
    return Kernel(name, reads, writes, src, helpers=[helper])


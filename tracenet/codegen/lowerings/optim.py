"""C lowerings of the optimizer updates of a compiled training step (``optim/update_ops.py``).

Each ``<rule>_step`` node becomes a small kernel calling its rule's update loop
(``templates/<rule>_update.c.j2``). The loop is a shared helper, emitted once per translation
unit for each element type and set of compile-time flags, so every parameter's kernel calls the
same function and a GEMM that computes a weight gradient can call it on its rows too.
"""
from ...ops.common import numel
from ..base import SFX, Kernel, ctype, lowering, node_lines, signature
from ..templates import render
from .conv_winograd import private_transforms_f4


def update_helper(template, ct, **flags):
    """(name, source) of the shared update loop for element type ``ct`` and compile-time
    ``flags``."""
    name = f"tn_{template}{SFX[ct]}_" + "_".join(f"{k}{int(bool(v))}"
                                                 for k, v in sorted(flags.items()))
    return name, render(f"{template}.c.j2", helper=name, ctype=ct, sfx=SFX[ct], **flags)


# The update loop runs in runs of this many bytes of the parameter, each run's next requested
# for writing before it (templates/optim_step.c.j2, ``owned_runs``). The ResNet's step, two
# threads, median of 20 steps, four alternating runs: the split 64 x 64 x 3 x 3 update 27.6 ->
# 9.0 us, 64 x 32 x 3 x 3 15.3 -> 5.2, 32 x 32 x 3 x 3 8.7 -> 3.6, the serial 64 x 32 x 1 x 1
# 2.3 -> 1.2 (runs of 2 KB: 9.3 -> 9.8, 5.9 -> 6.8, 3.8 -> 4.1 against 1 KB); one thread level
# (13.7 -> 14.2, 7.0 -> 7.1, noise). Only SGD's loop runs so: Adam's computes its bias
# corrections (two pow) each call, and in runs of 1 KB the MLP's step (784 x 256 weight, one
# thread, `bench/ab.py --model mlp --cpu`) took 411 -> 431 us
OWNED_RUN_BYTES = 1024


def lower_update(name, node, rule, state_roles, flags, target, owned_runs=False):
    """The kernel of one update node ``op(p, g, *state, h) -> (p, *state)``: its update loop
    ``<rule>_update`` reads p, g, the state arrays (named by ``state_roles``) and h, and writes
    the updated parameter and state; ``flags`` are the node attributes compiled into it.
    ``owned_runs``: the loop is called on runs of ``OWNED_RUN_BYTES``, each requesting the
    next run's lines of the parameter for writing."""
    p, g, *state, h = node.inputs
    reads = [("p", p), ("g", g)] + list(zip(state_roles, state)) + [("h", h)]
    writes = [("p_out", node.outputs[0])] + [(f"{role}_out", v) for role, v in
                                              zip(state_roles, node.outputs[1:])]
    helper = update_helper(f"{rule}_update", ctype(p), **{f: node.attrs[f] for f in flags})
    n = numel(p.shape)
    # a large parameter's update is memory-bound: each thread updates its own block, read
    # through its own core's cache
    parallel = target.parallel.update(n, private_transforms_f4(p.shape, target))
    src = render("optim_step.c.j2", name=name, node_lines=node_lines([node]),
                 signature=signature(reads, writes), numel=n, helper=helper[0],
                 args=[role for role, _ in reads + writes], parallel=parallel,
                 per_element=[role != "h" for role, _ in reads + writes],
                 ahead=OWNED_RUN_BYTES // p.dtype.itemsize if owned_runs else 0)
    return Kernel(name, reads, writes, src, parallel=parallel, helpers=[helper])


@lowering("sgd_step")
def lower_sgd_step(name, node, exported, target):
    return lower_update(name, node, "sgd", ("buf",), ("maximize", "nesterov"), target,
                        owned_runs=True)


@lowering("adam_step")
def lower_adam_step(name, node, exported, target):
    return lower_update(name, node, "adam", ("m", "v", "vmax"),
                        ("maximize", "decoupled", "amsgrad"), target)


@lowering("rmsprop_step")
def lower_rmsprop_step(name, node, exported, target):
    return lower_update(name, node, "rmsprop", ("sq", "buf", "gavg"), ("centered", "maximize"),
                        target)


@lowering("adagrad_step")
def lower_adagrad_step(name, node, exported, target):
    return lower_update(name, node, "adagrad", ("sum",), ("maximize",), target)

"""The Winograd convolutions (``conv_winograd.py``, ``conv_winograd_s2.py``) on values that are
not all finite: a Winograd tile mixes all its values, so an ``inf`` or ``NaN`` in an input or
gradient spreads over the whole tile (one ``NaN`` in a 16-channel 32x32 input gave 256 ``NaN``
outputs against eager mode's 144). Each Winograd kernel is compiled with its direct twin, the
kernel ``conv.py`` lowers the same group to without the Winograd forms, in the same C unit:
the Winograd kernel runs, and when what it produced is not all finite the direct one computes
the call again over the same arguments (every fused epilogue included) before the kernel
returns, with a ``TRACENET_DEBUG=fallback`` line.

What tells that a call was not all finite (``templates/conv_winograd_checked.c.j2``):
* a training forward's batch statistics: the mean of a channel is finite exactly when each of
  its values is (a sum that takes an ``inf`` or ``NaN`` is not finite), at no cost;
* the input gradients and the other forwards: notes in registers (``_finite_check.c.j2``'s
  ``note``): the output transform sums each tile's values before they are stored (before the
  epilogue) and adds the sum less itself into a vector that lives across a block's rows. An
  ``inf`` or ``NaN`` in an input, a weight or an output gradient reaches a tile's values: each
  transform (B^T d B, G g G^T, A^T M A, in every form) takes each of its operands with a
  nonzero coefficient, each product takes every value of V and U, and no arithmetic on an
  ``inf`` or ``NaN`` gives a finite value. A transform that overflows on finite values shows
  too, before a relu could turn its ``-inf`` into zeros. A forward's epilogue constants (the
  batch norm's scale and shift, or the bias) are checked once a call (``_winograd.c.j2``'s
  ``epilogue_finite``); the residual is added value by value, as eager mode does;
* else the results the kernel stored after the call (``tn_all_finite``: a weight gradient).
"""
from ...ops.common import numel
from ..base import Kernel, SFX, ctype, signature, size_max, threads_scratch
from ..templates import environment, render


def _all_finite_helpers(ct):
    """The C helpers the checks call (``templates/_finite_check.c.j2``), once per C unit."""
    macros = environment().get_template("_finite_check.c.j2").module
    return [(f"tn_all_finite{SFX[ct]}", str(macros.all_finite(ct, SFX[ct]))),
            ("tn_direct_fallback_log", str(macros.fallback_log()))]


def call(kernel, roles, scratch="scratch"):
    """The C call of ``kernel`` with a group's arguments (its values' roles in the group), its
    scratch at ``scratch``."""
    args = [f"tn_{s}" for s in kernel.symbols]
    args += [roles[v] for _, v in kernel.reads + kernel.writes]
    if kernel.scratch:
        args.append(scratch)
    return f"{kernel.name}({', '.join(args)});"


# Elements ahead of the twins' scratch that hold the call's flag (``_finite_check.c.j2``'s
# ``flag``): whole 64-byte lines (of float or double), so that the twins' scratch keeps its
# alignment
_FLAG_ELEMENTS = 16


def _with_flag(scratch):
    """``scratch`` (``Kernel.scratch``) with ``_FLAG_ELEMENTS`` more ahead of it."""
    if not isinstance(scratch, tuple):
        return scratch + _FLAG_ELEMENTS
    shared = scratch[2] if len(scratch) > 2 else 0
    return (scratch[0], "threads", shared + _FLAG_ELEMENTS)


def scratch_for_either(a, b):
    """Scratch enough for each of two kernels that never run at once (``Kernel.scratch``)."""
    if not isinstance(a, tuple) and not isinstance(b, tuple):
        return size_max(a, b)

    def per_thread_and_shared(s):
        if not isinstance(s, tuple):
            return 0, s
        return s[0], (s[2] if len(s) > 2 else 0)
    (pa, sa), (pb, sb) = per_thread_and_shared(a), per_thread_and_shared(b)
    return threads_scratch(size_max(pa, pb), True, size_max(sa, sb))


def stored(kernel, *roles):
    """The checks of the values ``kernel`` reads or writes in ``roles``: (role, element
    count)."""
    size = {role: numel(v.shape) for role, v in kernel.reads + kernel.writes}
    return [(role, size[role]) for role in roles]


def checked(name, winograd, direct, after):
    """The kernel ``name``: ``winograd`` (named ``{name}_winograd``), then, when its flag
    (``finite_flag``, where it notes its values) is set or the values of ``after`` are not all
    finite, ``direct`` (named ``{name}_direct``, the same reads and writes) over the same
    arguments. ``after``: (role, element count) of the values to check."""
    flag = getattr(winograd, "finite_flag", None)
    assert [(r, v) for r, v in winograd.reads + winograd.writes] == \
        [(r, v) for r, v in direct.reads + direct.writes], "the twins take the same arguments"
    assert not winograd.checks and not direct.checks
    reads, writes = winograd.reads, winograd.writes
    ct = ctype(writes[0][1])
    scratch = scratch_for_either(winograd.scratch, direct.scratch)
    at = "scratch"
    if flag:
        scratch, at = _with_flag(scratch), f"scratch + {_FLAG_ELEMENTS}"
    roles = {v: role for role, v in reads + writes}
    src = render("conv_winograd_checked.c.j2", name=name, sfx=SFX[ct],
                 signature=signature(reads, writes, scratch, winograd.scratch_ctype),
                 winograd=winograd, direct=direct, winograd_call=call(winograd, roles, at),
                 direct_call=call(direct, roles, at), after=after,
                 flag=flag)
    return Kernel(name, reads, writes, src, scratch, winograd.scratch_ctype,
                  flops=winograd.flops, parallel=winograd.parallel or direct.parallel,
                  helpers=_merged(winograd.helpers + direct.helpers + _all_finite_helpers(ct)))


def _merged(helpers):
    """``helpers`` without repeats (by name), in order."""
    seen, out = set(), []
    for h in helpers:
        if h[0] not in seen:
            seen.add(h[0])
            out.append(h)
    return out

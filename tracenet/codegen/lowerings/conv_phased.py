"""C lowering of the input gradient of a 2-d 3x3 convolution of stride 2 and padding 1 on an
image of even sizes (the ResNet's downsampling convolutions), by phases.

With stride 2, the input position h receives the output gradient through the kernel rows kh
with h + 1 - kh even only: an even h through kh = 1 from output row h / 2, an odd h through
kh = 0 and 2 from rows (h + 1) / 2 and (h - 1) / 2; columns alike. So each of the four phases
(row parity a, column parity b) of the input gradient is a small stride-1 convolution of the
output gradient with 1, 2 or 4 of the taps, shifted by 0 or +1 output row and column. Per
image, each phase is one GEMM [C x O * taps] x shifted views of the output gradient (copied
once, a zero row and column after it, rows of width OW + 1), and the four results are
interleaved into the image gradient, every element written once: no column matrix, no
col2im's additions, and the nine taps' products, no more (but for the padded column).
"""
from ..base import Kernel, SFX, ctype, node_lines, signature, threads_scratch
from ..templates import render
from .conv_flops import conv_flops


def takes_input_gradient(geo, ct):
    """Whether the input gradient of a convolution of geometry ``geo`` (``conv.py``'s 3-d
    form) is lowered here."""
    return (ct in SFX and geo["G"] == 1 and not geo["deep"] and geo["D"] == geo["OD"] == 1 and
            geo["KH"] == geo["KW"] == 3 and geo["SH"] == geo["SW"] == 2 and
            geo["PH"] == geo["PW"] == 1 and geo["DH"] == geo["DW"] == 1 and
            geo["H"] == 2 * geo["OH"] and geo["W"] == 2 * geo["OW"])


# parity -> the kernel taps reaching an input position of that parity, with the shift of the
# output position they come from
_TAPS = {0: ((1, 0),), 1: ((0, 1), (2, 0))}


def _phases(geo):
    """Per phase (a, b): its taps (kh, kw), where each tap's output gradient starts in the
    padded copy (one row per output channel o and tap: o * plane + di * WP + dj), and where
    its repacked weights start in the shared scratch."""
    wp = geo["OW"] + 1
    plane = (geo["OH"] + 1) * wp
    phases, at = [], 0
    for a in (0, 1):
        for b in (0, 1):
            taps = [(kh, kw, di * wp + dj) for kh, di in _TAPS[a] for kw, dj in _TAPS[b]]
            rows = [o * plane + off for o in range(geo["O"]) for _, _, off in taps]
            phases.append(dict(a=a, b=b, taps=[(kh, kw) for kh, kw, _ in taps], rows=rows,
                               K=len(rows), at=at))
            at += geo["C"] * len(rows)
    return phases, at


def _round16(n):
    return -(-n // 16) * 16


def lower_backward_input(name, node, geo, target):
    gy, w = node.inputs
    out = node.outputs[0]
    ct = ctype(out)
    phases, shared = _phases(geo)
    wp = geo["OW"] + 1
    plane = (geo["OH"] + 1) * wp
    nq = geo["OH"] * wp
    padded = _round16(geo["O"] * plane + 1)  # a tap's last view reads one element past
    per_thread = padded + 2 * _round16(geo["C"] * nq)
    shared = _round16(shared)
    flops = conv_flops(geo)
    parallel = target.parallel.compute(flops, geo["N"])
    reads, writes = [("gy", gy), ("w", w)], [("out", out)]
    src = render("conv_backward_input_phased.c.j2", name=name, node_lines=node_lines([node]),
                 ctype=ct, sfx=SFX[ct], signature=signature(reads, writes, 1, ct),
                 parallel=parallel, phases=phases, shared=shared, per_thread=per_thread,
                 padded=padded, result=_round16(geo["C"] * nq), WP=wp, PLANE=plane, NQ=nq,
                 **geo)
    return Kernel(name, reads, writes, src, threads_scratch(per_thread, parallel, shared), ct,
                  flops=flops, parallel=parallel)

"""tracenet's GEMM against numpy's and PyTorch's ``mm`` on the same shapes.

    python bench/gemm.py [--shapes 64x784x256,64x784x256t,...] [--rounds 5] [--calls 20]
                         [--threads N]

For each M x K x N (C[M x N] = A[M x K] B[K x N], float32; a trailing ``t``: B stored
transposed, N x K, as a linear layer's weight): numpy's ``a @ b`` (its BLAS, with its own
threads), ``torch.mm`` with 1 and 2 threads, and ``tracenet.compile`` of a module
computing ``x @ w`` under ``no_grad`` (a whole compiled call, its small fixed cost included).
The workloads of one shape alternate in rounds (bench/lenet.py's ``compare``); the table gives
GFLOP/s from the median time per call and the ratio tracenet / the best of the others
(> 1: tracenet is faster). tracenet's threads adapt to the cores other processes leave free
unless ``--threads`` sets them (``tracenet.set_num_threads``).
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import tracenet as tn  # noqa: E402
from lenet import compare  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover
    sys.exit("bench/gemm.py compares against PyTorch: pip install torch==2.13.0")

SHAPES = ("64x784x256,64x784x256t,64x256x10,64x256x10t,256x784x256,256x784x256t,"
          "128x1024x1024,512x512x512")


class _MatMul(tn.nn.Module):
    def __init__(self, w, transposed):
        super().__init__()
        self.w = tn.nn.Parameter(w)
        self.transposed = transposed

    def forward(self, x):
        return tn.matmul(x, self.w.t() if self.transposed else self.w)


def _torch_mm(a, b, threads):
    def run():
        torch.set_num_threads(threads)
        torch.mm(a, b)
    return run


def row(m, k, n, transposed, rounds, calls):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k) if transposed else (k, n)).astype(np.float32)
    b = w.T if transposed else w  # a view, as torch's w.t()
    ta, tb = torch.from_numpy(a), torch.from_numpy(w)
    tb = tb.t() if transposed else tb
    compiled = tn.compile(_MatMul(tn.from_numpy(w), transposed))
    x = tn.from_numpy(a)

    def tn_mm():
        with tn.no_grad():
            compiled(x)

    with tn.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), a @ b, rtol=1e-3, atol=1e-3)
    times = compare([lambda: a @ b, _torch_mm(ta, tb, 1), _torch_mm(ta, tb, 2), tn_mm],
                    rounds, calls)
    flops = 2.0 * m * k * n
    return [flops / t * 1e-9 for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SHAPES)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0, help="tracenet's threads (default: adaptive)")
    args = ap.parse_args()
    if args.threads:
        tn.set_num_threads(args.threads)
    print(f"# float32 GFLOP/s (median time per call over {args.rounds} alternating rounds of "
          f"{args.calls}); ratio = tracenet / best other; numpy {np.__version__}, "
          f"PyTorch {torch.__version__}")
    print("| M x K x N | numpy | torch.mm 1 thread | torch.mm 2 threads | tracenet | ratio |")
    print("|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        transposed = shape.endswith("t")
        m, k, n = (int(s) for s in shape.rstrip("t").split("x"))
        g = row(m, k, n, transposed, args.rounds, args.calls)
        print(f"| {m}x{k}x{n}{' (b^T)' if transposed else ''} | {g[0]:.1f} | {g[1]:.1f} | {g[2]:.1f} | {g[3]:.1f} | "
              f"{g[3] / max(g[:3]):.2f}x |", flush=True)


if __name__ == "__main__":
    main()

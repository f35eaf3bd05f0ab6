"""A small Transformer language model side by side: PyTorch eager vs tracenet compiled.

    python bench/transformer.py [--quick] [--threads N]

Embedding + learned positions, 2 TransformerEncoderLayers (batch_first, causal mask,
dropout 0), a linear head; vocab 50, d_model 32, 4 heads, sequence 16. Train step =
zero_grad, forward, cross-entropy, backward, Adam. Both frameworks run in this process with
the same weights, alternating in rounds as bench/lenet.py does; every row prints the ratio
PyTorch time / tracenet time (> 1 means tracenet is faster). tracenet runs the step as the
plain loop around ``tracenet.compile(model)`` and as one C call (``compile_step``).
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import tracenet as tn  # noqa: E402

try:
    import torch
except ImportError:  # pragma: no cover
    sys.exit("bench/transformer.py compares against PyTorch: pip install torch==2.13.0")

from lenet import compare  # noqa: E402

VOCAB, D_MODEL, HEADS, SEQ = 50, 32, 4, 16


def language_model(lib):
    """The model written once, built with ``lib`` (``torch`` or ``tracenet``)."""
    nn = lib.nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D_MODEL)
            self.pos = nn.Parameter(lib.randn(SEQ, D_MODEL) * 0.1)
            layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, 64, dropout=0.0,
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(D_MODEL, VOCAB)
            self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(SEQ))

        def forward(self, tokens):
            x = self.embed(tokens) + self.pos
            return self.head(self.encoder(x, mask=self.mask, is_causal=True))
    return LM()


def workloads(batch, rng):
    tmodel = language_model(torch)
    plain_model, step_model = language_model(tn), language_model(tn)
    state = {k: tn.from_numpy(v.detach().numpy().copy()) for k, v in tmodel.state_dict().items()}
    plain_model.load_state_dict(state)
    step_model.load_state_dict(state)
    seq = rng.integers(0, VOCAB, (batch, SEQ + 1))
    tx, ty = torch.from_numpy(seq[:, :-1]), torch.from_numpy(seq[:, 1:])
    nx, ny = tn.from_numpy(seq[:, :-1]), tn.from_numpy(seq[:, 1:])
    t_opt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)

    def torch_step():
        t_opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tmodel(tx).reshape(-1, VOCAB), ty.reshape(-1))
        loss.backward()
        t_opt.step()
        return loss

    compiled = tn.compile(plain_model)
    opt = tn.optim.Adam(plain_model.parameters(), lr=1e-3)

    def plain_step():
        opt.zero_grad()
        loss = tn.nn.functional.cross_entropy(compiled(nx).reshape(-1, VOCAB), ny.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    step_opt = tn.optim.Adam(step_model.parameters(), lr=1e-3)
    step = tn.compile_step(lambda a, b: tn.nn.functional.cross_entropy(
        step_model(a).reshape(-1, VOCAB), b.reshape(-1)), step_opt)

    def fused_step():
        return step(nx, ny)

    first = [float(f().item()) for f in (torch_step, plain_step, fused_step)]
    np.testing.assert_allclose(first[1:], first[0], rtol=1e-4)  # same model, same first loss
    return torch_step, plain_step, fused_step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer rounds")
    ap.add_argument("--threads", type=int, default=2, help="threads of both frameworks")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tn.set_num_threads(args.threads)
    rounds, per_round = (3, 5) if args.quick else (7, 10)
    rng = np.random.default_rng(0)
    print(f"# Transformer LM (vocab {VOCAB}, d_model {D_MODEL}, {HEADS} heads, 2 layers, seq "
          f"{SEQ}), tracenet vs PyTorch {torch.__version__} eager ({torch.get_num_threads()} "
          f"threads); median us per train step over {rounds} alternating rounds of {per_round}")
    print()
    print("| batch | PyTorch eager us | tracenet plain loop us | ratio | "
          "tracenet compile_step us | ratio |")
    print("|---|---|---|---|---|---|")
    for batch in (8, 64):
        t, plain, fused = compare(workloads(batch, rng), rounds, per_round)
        print(f"| {batch} | {t * 1e6:.0f} | {plain * 1e6:.0f} | {t / plain:.2f}x | "
              f"{fused * 1e6:.0f} | {t / fused:.2f}x |", flush=True)


if __name__ == "__main__":
    main()

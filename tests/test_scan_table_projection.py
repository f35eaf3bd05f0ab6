"""A recurrent layer over embedded tokens projects the embedding table once and gathers each
token's projected row (``ops/table_projection.py``) when the table has fewer rows than there
are tokens: compiled results and every gradient follow eager and torch, and the graphs hold
the table's product, not the tokens'."""
import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn

from test_catalogue_rnn import npy, rand  # noqa: F401
from test_catalogue_rnn import _cache  # noqa: F401  (the cache-directory fixture)
from compile_checks import nan_filled_arenas
from test_scan import lm_steps_follow_eager

torch = pytest.importorskip("torch")

TOL = dict(rtol=1e-9, atol=1e-10)
EMBED, HIDDEN = 5, 6


def tagger(lib, name, vocab, emb_kwargs, rnn_kwargs):
    nn = lib.nn

    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, EMBED, dtype=lib.float64, **emb_kwargs)
            self.rnn = getattr(nn, name)(EMBED, HIDDEN, dtype=lib.float64, **rnn_kwargs)

        def forward(self, tokens):
            out, _ = self.rnn(self.embed(tokens))
            return out
    return Tagger()


def pair(name, vocab, emb_kwargs=None, rnn_kwargs=None):
    th = tagger(torch, name, vocab, emb_kwargs or {}, rnn_kwargs or {})
    ours = tagger(tn, name, vocab, emb_kwargs or {}, rnn_kwargs or {})
    for (_, p), (_, q) in zip(ours.named_parameters(), th.named_parameters()):
        p.data = tn.tensor(npy(q).copy())
    return th, ours


def run(lib, module, tokens):
    out = module(lib.from_numpy(tokens))
    (out * lib.tensor(rand(*out.shape, seed=3))).sum().backward()
    return [npy(out)] + [npy(p.grad) for p in module.parameters()]


def tokens_for(rnn_kwargs, vocab, length=7, batch=4, seed=0):
    shape = (batch, length) if rnn_kwargs.get("batch_first") else (length, batch)
    return np.random.default_rng(seed).integers(0, vocab, shape)


def projected_tables(graph):
    """The embedding nodes of ``graph`` that gather rows of a product (a projected table),
    those fused with the loop that reads them included (``test_scan_gather.py``)."""
    nodes = [m for n in graph.nodes for m in (n.members if n.op == "fused" else [n])]
    return [n for n in nodes if n.op == "embedding" and
            n.inputs[0].producer is not None and n.inputs[0].producer.op == "gemm"]


def check(name, vocab, emb_kwargs=None, rnn_kwargs=None, monkeypatch=None):
    rnn_kwargs = rnn_kwargs or {}
    th, ours = pair(name, vocab, emb_kwargs, rnn_kwargs)
    tokens = tokens_for(rnn_kwargs, vocab)
    compiled = tn.compile(ours)
    got = run(tn, compiled, tokens)
    ours.zero_grad()
    eager = run(tn, ours, tokens)
    want = run(torch, th, tokens)
    assert len(got) == len(want)
    for a, b, c in zip(got, eager, want):
        assert a.shape == c.shape
        np.testing.assert_allclose(a, b, **TOL)
        np.testing.assert_allclose(a, c, **TOL)
    return compiled


@pytest.mark.parametrize("name,rnn_kwargs", [
    ("LSTM", {}),
    ("LSTM", dict(batch_first=True)),
    ("GRU", dict(batch_first=True)),
    ("RNN", {}),
    ("LSTM", dict(num_layers=2, bidirectional=True)),  # both directions read the embedding
])
def test_a_small_table_is_projected_once_and_gathered(name, rnn_kwargs):
    compiled = check(name, 9, rnn_kwargs=rnn_kwargs)
    dirs = 2 if rnn_kwargs.get("bidirectional") else 1
    tables = projected_tables(compiled.graph)
    assert len(tables) == dirs  # the first layer's input projections; layer 2 reads states
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[name] * HIDDEN
    assert all(tuple(n.output.shape[-1:]) == (gates,) and
               tuple(n.inputs[0].shape) == (9, gates) for n in tables)
    # no product over the tokens' rows of the embedding width
    assert not [n for n in compiled.graph.nodes
                if n.op == "gemm" and n.inputs[0].shape[-1] == EMBED and
                n.inputs[0].shape[0] != 9]
    # the gradients: the tokens' rows summed into table rows, before the weight products
    grads = [m for n in compiled.backward_graph.nodes for m in (n.members or [n])
             if m.op == "embedding_backward"]  # (alone or in a fused table_gradient)
    assert len(grads) == dirs and all(tuple(n.output.shape) == (9, gates) for n in grads)


def test_a_table_larger_than_the_tokens_is_not_projected():
    compiled = check("LSTM", 40, rnn_kwargs=dict(batch_first=True))  # 28 tokens
    assert not projected_tables(compiled.graph)


@pytest.mark.parametrize("emb_kwargs", [dict(padding_idx=2), dict(scale_grad_by_freq=True)])
def test_padding_and_frequency_scaling_keep_the_token_product(emb_kwargs):
    # both change the table's gradient, which then is not the sum the weight's gradient needs
    compiled = check("LSTM", 9, emb_kwargs=emb_kwargs)
    assert not projected_tables(compiled.graph)


def test_symbolic_batch_sizes_and_a_nan_filled_arena(monkeypatch):
    nan_filled_arenas(monkeypatch)
    th, ours = pair("LSTM", 9, rnn_kwargs=dict(batch_first=True))
    compiled = tn.compile(ours)
    for batch in (4, 1, 6):  # one build: the batch size is the symbol N
        tokens = tokens_for(dict(batch_first=True), 9, batch=batch, seed=batch)
        with tn.no_grad():
            got = compiled(tn.from_numpy(tokens)).numpy()
        with torch.no_grad():
            want = th(torch.from_numpy(tokens)).numpy()
        np.testing.assert_allclose(got, want, **TOL)
    assert len(compiled.specialisations) == 1
    assert projected_tables(compiled.graph)


def test_training_step_with_adam_follows_eager(monkeypatch):
    nan_filled_arenas(monkeypatch)
    tn.manual_seed(0)
    vocab = 13

    class LM(tnn.Module):
        def __init__(self):
            super().__init__()
            self.embed = tnn.Embedding(vocab, 8)
            self.rnn = tnn.LSTM(8, 16, batch_first=True)
            self.out = tnn.Linear(16, vocab)

        def forward(self, x):
            y, _ = self.rnn(self.embed(x))
            return self.out(y).reshape(-1, vocab)

    step, _ = lm_steps_follow_eager(LM, lambda params: tn.optim.Adam(params, lr=1e-2), vocab,
                                    (5, 9), 3)
    assert projected_tables(step.graph)

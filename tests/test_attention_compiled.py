"""Attention compiled: bmm's C lowering, MultiheadAttention and the Transformer layers against
eager mode (forward and every gradient), and a small Transformer language model trained
compiled with eager's loss curve."""
import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as nn
import tracenet.nn.functional as F

TOL = 1e-4


def _close(a, b, tol=TOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def check_compiled(model, inputs, tol=TOL, **kwargs):
    """Compiled forward and gradients (parameters and inputs) against eager mode."""
    compiled = tn.compile(model)
    xs = [x.detach().requires_grad_(x.dtype.is_floating_point) for x in inputs]
    ref = model(*xs, **kwargs)
    out = compiled(*xs, **kwargs)
    ref, out = (ref[0], out[0]) if isinstance(ref, tuple) else (ref, out)
    _close(out.detach().numpy(), ref.detach().numpy(), tol)
    gy = tn.randn(*ref.shape, dtype=ref.dtype)
    model.zero_grad()
    ref.backward(gy)
    expect = [p.grad.numpy().copy() for p in model.parameters()]
    expect_x = [x.grad.numpy().copy() for x in xs if x.requires_grad]
    model.zero_grad()
    for x in xs:
        x.grad = None
    out.backward(gy)
    for p, e in zip(model.parameters(), expect):
        _close(p.grad.numpy(), e, tol)
    for x, e in zip([x for x in xs if x.requires_grad], expect_x):
        _close(x.grad.numpy(), e, tol)
    return compiled


class Bmm(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(tn.randn(3, 5, 7))

    def forward(self, x):
        return x.bmm(self.w).relu().bmm(self.w.transpose(1, 2))


def test_bmm_compiles_forward_and_backward():
    tn.manual_seed(0)
    compiled = check_compiled(Bmm(), [tn.randn(3, 4, 5)])
    assert "tn_gemm" in compiled.source() and "bmm" in compiled.source()


def test_bmm_float64_and_batch_sizes():
    tn.manual_seed(0)
    model = Bmm().double()
    check_compiled(model, [tn.randn(3, 9, 5, dtype=tn.float64)])


class Attention(nn.Module):
    def __init__(self, mha, mask=None, **kwargs):
        super().__init__()
        self.mha, self.mask, self.kwargs = mha, mask, kwargs

    def forward(self, q, k, v):
        return self.mha(q, k, v, attn_mask=self.mask, **self.kwargs)[0]


def _causal(n):
    return nn.Transformer.generate_square_subsequent_mask(n)


@pytest.mark.parametrize("cfg,kwargs,mask", [
    (dict(), dict(), None),
    (dict(batch_first=True), dict(need_weights=False), "causal"),
    (dict(batch_first=True), dict(need_weights=True), "bool"),
    (dict(kdim=6, vdim=5), dict(need_weights=False), None),
])
def test_mha_compiled_matches_eager(cfg, kwargs, mask):
    tn.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, **cfg)
    m = {"causal": _causal(4), "bool": tn.rand(4, 4) > 0.7, None: None}[mask]
    if mask == "bool":
        m[:, 0] = False  # MultiheadAttention's True = masked: keep a key in every row
    bf = cfg.get("batch_first", False)
    shape = (3, 4) if bf else (4, 3)
    inputs = [tn.randn(*shape, 8), tn.randn(*shape, cfg.get("kdim", 8)),
              tn.randn(*shape, cfg.get("vdim", 8))]
    check_compiled(Attention(mha, m, **kwargs), inputs)


def test_mha_self_attention_with_padding_mask_compiled():
    tn.manual_seed(0)

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(8, 4, batch_first=True)

        def forward(self, x, pad):
            return self.mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]

    pad = tn.zeros(2, 5, dtype=tn.bool)
    pad[0, 3:] = True
    check_compiled(SelfAttention(), [tn.randn(2, 5, 8), pad])


@pytest.mark.parametrize("cfg", [dict(), dict(batch_first=True, norm_first=True,
                                               activation="gelu")])
def test_encoder_layer_compiled_matches_eager(cfg):
    tn.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, **cfg)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x, src_mask=_causal(6), is_causal=True)

    check_compiled(Net(), [tn.randn(3, 6, 16)])


@pytest.mark.parametrize("cfg", [dict(), dict(batch_first=True, norm_first=True)])
def test_decoder_layer_compiled_matches_eager(cfg):
    tn.manual_seed(0)
    layer = nn.TransformerDecoderLayer(16, 4, 32, dropout=0.0, **cfg)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, tgt, memory):
            return self.layer(tgt, memory, tgt_mask=_causal(5))

    bf = cfg.get("batch_first", False)
    check_compiled(Net(), [tn.randn(*((2, 5) if bf else (5, 2)), 16),
                           tn.randn(*((2, 7) if bf else (7, 2)), 16)])


def test_dropout_in_attention_compiles():
    tn.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True)
    compiled = tn.compile(Attention(mha, None, need_weights=False))
    x = tn.randn(2, 4, 8)
    out = compiled(x, x, x)
    assert out.shape == (2, 4, 8) and np.isfinite(out.detach().numpy()).all()
    mha.eval()
    _close(compiled(x, x, x).detach().numpy(),
           Attention(mha, None, need_weights=False)(x, x, x).detach().numpy())


# --- end to end: a small Transformer language model ---------------------------------------

VOCAB, D_MODEL, HEADS, SEQ, BATCH = 50, 32, 4, 16, 8


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Parameter(tn.randn(SEQ, D_MODEL) * 0.1)
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos
        x = self.encoder(x, mask=nn.Transformer.generate_square_subsequent_mask(SEQ),
                         is_causal=True)
        return self.head(x)


def _batches(steps):
    rng = np.random.default_rng(0)
    # a learnable sequence: each token is the previous one plus a per-sequence stride
    start = rng.integers(0, VOCAB, (steps, BATCH, 1))
    stride = rng.integers(1, 4, (steps, BATCH, 1))
    seq = (start + stride * np.arange(SEQ + 1)) % VOCAB
    return [(tn.tensor(s[:, :-1]), tn.tensor(s[:, 1:])) for s in seq]


def _train(model, forward, steps=50):
    opt = tn.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for x, y in _batches(steps):
        opt.zero_grad()
        loss = F.cross_entropy(forward(x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


def test_transformer_lm_trains_compiled_like_eager():
    tn.manual_seed(0)
    eager_model = TinyLM()
    compiled_model = TinyLM()
    compiled_model.load_state_dict(eager_model.state_dict())
    eager = _train(eager_model, eager_model)
    compiled = _train(compiled_model, tn.compile(compiled_model))
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    assert compiled[-1] < 0.5 * compiled[0]  # it learns


def test_transformer_lm_compile_step_like_eager():
    tn.manual_seed(0)
    eager_model = TinyLM()
    model = TinyLM()
    model.load_state_dict(eager_model.state_dict())
    eager = _train(eager_model, eager_model, steps=20)
    opt = tn.optim.Adam(model.parameters(), lr=3e-3)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    compiled_step = tn.compile_step(step, opt)
    losses = [compiled_step(x, y).item() for x, y in _batches(20)]
    np.testing.assert_allclose(losses, eager, rtol=1e-4)


@pytest.mark.parametrize("trans_a,trans_b", [(False, True), (True, False), (True, True)])
def test_bmm_transposed_operands_compile(trans_a, trans_b):
    from tracenet.ops.linalg import bmm_t

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(tn.randn(3, *((7, 5) if trans_b else (5, 7))))

        def forward(self, x):
            return bmm_t(x, self.w, trans_a=trans_a, trans_b=trans_b).tanh()

    tn.manual_seed(0)
    net = Net()
    x = tn.randn(3, *((5, 4) if trans_a else (4, 5)))
    expect = np.matmul(np.swapaxes(x.numpy(), 1, 2) if trans_a else x.numpy(),
                       np.swapaxes(net.w.detach().numpy(), 1, 2) if trans_b
                       else net.w.detach().numpy())
    _close(net(x).detach().numpy(), np.tanh(expect), 1e-5)
    compiled = check_compiled(net, [x])
    # the transposes are flags of the kernel: no permute copies in either graph
    assert "permute" not in str(compiled.graph) + str(compiled.backward_graph)


def test_baddbmm_addbmm_and_batched_einsum_compile():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(tn.randn(4, 5, 6))
            self.c = nn.Parameter(tn.randn(3, 6))

        def forward(self, x):
            y = tn.baddbmm(self.c, x, self.w, beta=0.5, alpha=2.0)
            z = tn.addbmm(self.c, x, self.w)
            return tn.einsum("bij,bjk->bik", y, self.w.transpose(1, 2)).sum(-1) + z.sum()

    tn.manual_seed(0)
    compiled = check_compiled(Net(), [tn.randn(4, 3, 5)])
    assert "bmm" in compiled.source()

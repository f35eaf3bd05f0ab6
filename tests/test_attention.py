"""Attention and Transformer layers in eager mode against PyTorch: values, gradients, reprs,
state dicts and errors."""
import warnings

import numpy as np
import pytest

import tracenet
import tracenet.nn as nn
import tracenet.nn.functional as F

torch = pytest.importorskip("torch")


def tn(t, grad=False):
    return tracenet.tensor(t.detach().numpy(), requires_grad=grad)


def copy_weights(ours, theirs):
    ours.load_state_dict({k: tn(v) for k, v in theirs.state_dict().items()})


def close(a, b, tol=1e-5):
    a = a.detach().numpy() if hasattr(a, "detach") else a
    np.testing.assert_allclose(a.numpy() if hasattr(a, "numpy") else a, b.detach().numpy(),
                               rtol=tol, atol=tol)


def _mask(kind, rows, cols, gen):
    if kind == "bool":
        m = torch.rand(rows, cols, generator=gen) > 0.3
        m[:, 0] = True  # no fully masked rows: torch's paths differ on those
        return m
    if kind == "float":
        return torch.randn(rows, cols, generator=gen)
    return None


# --- scaled_dot_product_attention ------------------------------------------------------------

@pytest.mark.parametrize("batch", [(2, 3), (3,), ()])
@pytest.mark.parametrize("mask", [None, "bool", "float", "full_row"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_matches_torch(batch, mask, causal):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(*batch, 4, 8, generator=gen, requires_grad=True)
    k = torch.randn(*batch, 5, 8, generator=gen, requires_grad=True)
    v = torch.randn(*batch, 5, 8, generator=gen, requires_grad=True)
    m = _mask(mask, 4, 5, gen)
    if mask == "full_row":
        m = torch.ones(4, 5, dtype=torch.bool)
        m[2] = False
    if causal and m is not None and len(batch) != 2:
        with pytest.raises(RuntimeError, match="Explicit attn_mask should not be set"):
            F.scaled_dot_product_attention(tn(q), tn(k), tn(v), attn_mask=tn(m), is_causal=True)
        return
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)
    tq, tk, tv = tn(q, True), tn(k, True), tn(v, True)
    ours = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=None if m is None else tn(m),
                                          is_causal=causal)
    close(ours, out)
    assert type(ours.grad_fn).__name__ == type(out.grad_fn).__name__
    g = torch.randn(out.shape, generator=gen)
    out.backward(g)
    ours.backward(tn(g))
    for a, b in ((tq, q), (tk, k), (tv, v)):
        close(a.grad, b.grad)


def test_sdpa_scale_value_dim_and_gqa():
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 3, 8, generator=gen)
    k = torch.randn(2, 2, 6, 8, generator=gen)
    v = torch.randn(2, 2, 6, 5, generator=gen)
    f = torch.nn.functional.scaled_dot_product_attention
    close(F.scaled_dot_product_attention(tn(q), tn(k), tn(v), scale=0.3, enable_gqa=True),
          f(q, k, v, scale=0.3, enable_gqa=True))


def test_sdpa_dropout_only_when_positive():
    q = tracenet.randn(2, 3, 4)
    a = F.scaled_dot_product_attention(q, q, q, dropout_p=0.0)
    b = F.scaled_dot_product_attention(q, q, q, dropout_p=0.0)
    assert np.array_equal(a.numpy(), b.numpy())
    tracenet.manual_seed(0)
    c = F.scaled_dot_product_attention(q, q, q, dropout_p=0.9)
    assert not np.allclose(a.numpy(), c.numpy())
    tracenet.manual_seed(1)
    ones = tracenet.ones(1, 4, 4)
    d = F.scaled_dot_product_attention(ones, ones, ones, dropout_p=0.5).numpy()
    # each of the 4 weights 1/4 is dropped or scaled by 1/(1-p): sums are multiples of 1/2
    assert np.allclose(d * 2, np.round(d * 2), atol=1e-5) and len(np.unique(d)) > 1


def test_sdpa_errors():
    q = tracenet.randn(2, 3, 4)
    with pytest.raises(RuntimeError, match="Expected attn_mask dtype to be bool or float"):
        F.scaled_dot_product_attention(q, q, q, attn_mask=tracenet.zeros(3, 3, dtype=tracenet.long))
    with pytest.raises(RuntimeError, match="dropout probability has to be between 0 and 1"):
        F.scaled_dot_product_attention(q, q, q, dropout_p=1.5)


# --- MultiheadAttention -------------------------------------------------------------------

MHA_CONFIGS = [
    dict(),
    dict(batch_first=True),
    dict(bias=False),
    dict(add_bias_kv=True, add_zero_attn=True),
    dict(kdim=6, vdim=5, batch_first=True),
]


def _mha_pair(cfg, seed=0):
    torch.manual_seed(seed)
    theirs = torch.nn.MultiheadAttention(8, 2, **cfg)
    ours = nn.MultiheadAttention(8, 2, **cfg)
    copy_weights(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize("cfg", MHA_CONFIGS)
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("masks", ["none", "attn_bool", "attn_float", "attn_3d", "padding",
                                   "both"])
def test_mha_matches_torch(cfg, need_weights, masks):
    ours, theirs = _mha_pair(cfg)
    gen = torch.Generator().manual_seed(2)
    bf = cfg.get("batch_first", False)
    L, S, N = 4, 5, 3
    shape = (lambda s: (N, s) if bf else (s, N))
    q = torch.randn(*shape(L), 8, generator=gen, requires_grad=True)
    k = torch.randn(*shape(S), cfg.get("kdim", 8), generator=gen, requires_grad=True)
    v = torch.randn(*shape(S), cfg.get("vdim", 8), generator=gen, requires_grad=True)
    kw = {}
    if masks in ("attn_bool", "both"):
        kw["attn_mask"] = ~_mask("bool", L, S, gen)  # True = masked in MultiheadAttention
    if masks == "attn_float":
        kw["attn_mask"] = torch.randn(L, S, generator=gen)
    if masks == "attn_3d":  # one mask per (batch, head)
        kw["attn_mask"] = torch.randn(N * 2, L, S, generator=gen)
    if masks in ("padding", "both"):
        pad = torch.zeros(N, S, dtype=torch.bool)
        pad[0, -2:] = True
        kw["key_padding_mask"] = pad
    out, w = theirs(q, k, v, need_weights=need_weights, **kw)
    tq, tk, tv = tn(q, True), tn(k, True), tn(v, True)
    ours_out, ours_w = ours(tq, tk, tv, need_weights=need_weights,
                            **{name: tn(m) for name, m in kw.items()})
    close(ours_out, out)
    assert (ours_w is None) == (w is None)
    if w is not None:
        close(ours_w, w)
    g = torch.randn(out.shape, generator=gen)
    (out * g).sum().backward()
    (ours_out * tn(g)).sum().backward()
    for a, b in ((tq, q), (tk, k), (tv, v)):
        close(a.grad, b.grad, 1e-4)
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        close(p.grad, theirs_params[name].grad, 1e-4)


def test_mha_self_attention_unbatched_and_per_head_weights():
    ours, theirs = _mha_pair({})
    x = torch.randn(4, 8)
    out, w = theirs(x, x, x, average_attn_weights=False)
    tx = tn(x)
    ours_out, ours_w = ours(tx, tx, tx, average_attn_weights=False)
    close(ours_out, out)
    close(ours_w, w)
    assert tuple(ours_w.shape) == (2, 4, 4)


def test_mha_is_causal_needs_a_mask_and_uses_it():
    ours, theirs = _mha_pair(dict(batch_first=True))
    x = torch.randn(2, 6, 8)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(6)
    out = theirs(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0]
    tx = tn(x)
    ours_mask = nn.Transformer.generate_square_subsequent_mask(6)
    close(ours_mask, mask)
    close(ours(tx, tx, tx, attn_mask=ours_mask, is_causal=True, need_weights=False)[0], out)
    with pytest.raises(RuntimeError, match="Need attn_mask if specifying the is_causal hint"):
        ours(tx, tx, tx, is_causal=True)


def test_mha_parameters_state_dict_and_init():
    for cfg in MHA_CONFIGS:
        ours, theirs = _mha_pair(cfg)
        assert list(ours.state_dict()) == list(theirs.state_dict())
        for (n1, p1), (n2, p2) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert n1 == n2 and tuple(p1.shape) == tuple(p2.shape)
        assert repr(ours) == repr(theirs)
    fresh = nn.MultiheadAttention(64, 4)
    assert float(fresh.in_proj_bias.abs().sum()) == 0.0
    assert float(fresh.out_proj.bias.abs().sum()) == 0.0
    bound = (6.0 / (64 + 3 * 64)) ** 0.5  # xavier_uniform on (3E, E)
    w = fresh.in_proj_weight.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    # torch's state dict loads into ours and back
    theirs = torch.nn.MultiheadAttention(8, 2, kdim=6, vdim=5)
    ours = nn.MultiheadAttention(8, 2, kdim=6, vdim=5)
    copy_weights(ours, theirs)
    back = {k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(back)


def test_mha_invalid_arguments():
    with pytest.raises(AssertionError, match="embed_dim must be divisible by num_heads"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="embed_dim and num_heads must be greater than 0"):
        nn.MultiheadAttention(0, 2)
    m = nn.MultiheadAttention(8, 2)
    x = tracenet.randn(4, 3, 8)
    with pytest.raises(RuntimeError, match="The shape of the 2D attn_mask is"):
        m(x, x, x, attn_mask=tracenet.zeros(3, 3))
    with pytest.raises(AssertionError, match="only bool and floating types of attn_mask"):
        m(x, x, x, attn_mask=tracenet.zeros(4, 4, dtype=tracenet.long))
    with pytest.raises(AssertionError, match="query should be unbatched 2D or batched 3D"):
        m(x[None], x[None], x[None])


# --- Transformer layers --------------------------------------------------------------------

LAYER_CONFIGS = [
    dict(),
    dict(batch_first=True),
    dict(norm_first=True, activation="gelu"),
    dict(batch_first=True, norm_first=True, bias=False, layer_norm_eps=1e-3),
]


def _pair(name, cfg, seed=0):
    torch.manual_seed(seed)
    theirs = getattr(torch.nn, name)(16, 4, dim_feedforward=24, dropout=0.0, **cfg)
    ours = getattr(nn, name)(16, 4, dim_feedforward=24, dropout=0.0, **cfg)
    copy_weights(ours, theirs)
    return ours, theirs


def _grads_match(ours, theirs, tol=1e-4):
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        close(p.grad, theirs_params[name].grad, tol)


@pytest.mark.parametrize("cfg", LAYER_CONFIGS)
@pytest.mark.parametrize("masks", ["none", "causal", "padding", "is_causal"])
def test_encoder_layer_matches_torch(cfg, masks):
    ours, theirs = _pair("TransformerEncoderLayer", cfg)
    bf = cfg.get("batch_first", False)
    x = torch.randn(*((3, 6) if bf else (6, 3)), 16, requires_grad=True)
    kw = {}
    if masks in ("causal", "is_causal"):
        kw["src_mask"] = torch.nn.Transformer.generate_square_subsequent_mask(6)
    if masks == "is_causal":
        kw["is_causal"] = True
    if masks == "padding":
        pad = torch.zeros(3, 6, dtype=torch.bool)
        pad[1, 4:] = True
        kw["src_key_padding_mask"] = pad
    out = theirs(x, **kw)
    tx = tn(x, True)
    ours_out = ours(tx, **{k: tn(v) if hasattr(v, "numpy") else v for k, v in kw.items()})
    close(ours_out, out, 1e-5)
    g = torch.randn(out.shape)
    (out * g).sum().backward()
    (ours_out * tn(g)).sum().backward()
    close(tx.grad, x.grad, 1e-4)
    _grads_match(ours, theirs)
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize("cfg", LAYER_CONFIGS)
def test_decoder_layer_matches_torch(cfg):
    ours, theirs = _pair("TransformerDecoderLayer", cfg)
    bf = cfg.get("batch_first", False)
    tgt = torch.randn(*((2, 5) if bf else (5, 2)), 16, requires_grad=True)
    mem = torch.randn(*((2, 7) if bf else (7, 2)), 16, requires_grad=True)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(5)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[0, 5:] = True
    out = theirs(tgt, mem, tgt_mask=mask, memory_key_padding_mask=pad)
    t_tgt, t_mem = tn(tgt, True), tn(mem, True)
    ours_out = ours(t_tgt, t_mem, tgt_mask=tn(mask), memory_key_padding_mask=tn(pad))
    close(ours_out, out)
    g = torch.randn(out.shape)
    (out * g).sum().backward()
    (ours_out * tn(g)).sum().backward()
    close(t_tgt.grad, tgt.grad, 1e-4)
    close(t_mem.grad, mem.grad, 1e-4)
    _grads_match(ours, theirs)
    assert repr(ours) == repr(theirs)


def test_encoder_stack_with_norm_and_transformer():
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as theirs_warned:
        warnings.simplefilter("always")
        theirs = torch.nn.TransformerEncoder(
            torch.nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0), 2,
            norm=torch.nn.LayerNorm(16))
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0), 2,
                                     norm=nn.LayerNorm(16))
    assert [str(w.message) for w in ours_warned] == [str(w.message) for w in theirs_warned]
    copy_weights(ours, theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(6, 2, 16)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(6)
    close(ours(tn(x), mask=tn(mask)), theirs(x, mask=mask))
    # the full encoder-decoder model
    torch.manual_seed(1)
    theirs = torch.nn.Transformer(16, 4, 2, 2, 24, dropout=0.0, batch_first=True,
                                  activation="gelu")
    ours = nn.Transformer(16, 4, 2, 2, 24, dropout=0.0, batch_first=True, activation="gelu")
    copy_weights(ours, theirs)
    assert repr(ours) == repr(theirs)
    src, tgt = torch.randn(2, 7, 16), torch.randn(2, 5, 16)
    tmask = torch.nn.Transformer.generate_square_subsequent_mask(5)
    close(ours(tn(src), tn(tgt), tgt_mask=tn(tmask)), theirs(src, tgt, tgt_mask=tmask))
    with pytest.raises(RuntimeError, match="the batch number of src and tgt must be equal"):
        ours(tn(src), tn(tgt[:1]))
    with pytest.raises(RuntimeError, match="the feature number of src and tgt must be equal"):
        ours(tn(src[..., :8]), tn(tgt[..., :8]))


def test_layer_invalid_arguments():
    with pytest.raises(RuntimeError, match="activation should be relu/gelu, not tanh"):
        nn.TransformerEncoderLayer(16, 4, activation="tanh")
    with pytest.raises(AssertionError, match="embed_dim must be divisible by num_heads"):
        nn.TransformerDecoderLayer(16, 3)


def test_callable_activation():
    torch.manual_seed(0)
    theirs = torch.nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0,
                                              activation=torch.nn.functional.silu)
    ours = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, activation=F.silu)
    copy_weights(ours, theirs)
    x = torch.randn(5, 2, 16)
    close(ours(tn(x)), theirs(x))

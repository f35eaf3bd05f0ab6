"""Catalogue part 2 against PyTorch: norms, distances, contractions, batched products,
scatter/gather, histc, generators, adaptive max / LP pooling, unfold/fold, and the compiled
layers against eager mode."""
import math

import numpy as np
import pytest
import torch

import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as TF
import torch.nn.functional as F

from compile_checks import check_compiled

rng = np.random.default_rng(2026)


def r(*shape, positive=False):
    a = rng.standard_normal(shape).astype(np.float32)
    return np.abs(a) + 0.1 if positive else a


def _as_list(y):
    return list(y) if isinstance(y, (tuple, list)) else [y]


def same(torch_fn, ours_fn, *arrays, grad=True, name=True, tol=1e-5, const=()):
    """Values, grad_fn names and input gradients of ``torch_fn`` and ``ours_fn`` on the same
    float arrays (``const`` are extra non-differentiated arguments given to both as is)."""
    ts = [torch.tensor(a, requires_grad=grad) for a in arrays]
    ns = [tn.tensor(a, requires_grad=grad) for a in arrays]
    yt, yn = _as_list(torch_fn(*ts)), _as_list(ours_fn(*ns))
    assert len(yt) == len(yn)
    total_t = total_n = 0
    for a, b in zip(yt, yn):
        assert tuple(a.shape) == tuple(b.shape)
        if a.dtype == torch.int64:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
            continue
        np.testing.assert_allclose(b.detach().numpy(), a.detach().numpy(), rtol=tol, atol=tol)
        if grad and name:
            assert type(a.grad_fn).__name__ == type(b.grad_fn).__name__
        if grad:
            w = np.asarray(rng.standard_normal(tuple(a.shape)), dtype=np.float32)
            total_t = total_t + (a * torch.tensor(w)).sum()
            total_n = total_n + (b * tn.tensor(w)).sum()
    if grad:
        total_t.backward()
        total_n.backward()
        for t, n in zip(ts, ns):
            expect = t.grad.numpy() if t.grad is not None else np.zeros(t.shape, np.float32)
            np.testing.assert_allclose(n.grad.numpy(), expect, rtol=1e-4, atol=1e-4)
    return yn


def raises_like(torch_fn, ours_fn):
    """Both raise, the same exception type."""
    with pytest.raises(Exception) as theirs:
        torch_fn()
    with pytest.raises(type(theirs.value)):
        ours_fn()


# --- norms ------------------------------------------------------------------------------------

ORDS = [2, 1, 3, 0.5, 0, math.inf, -math.inf]


@pytest.mark.parametrize("ord", ORDS)
@pytest.mark.parametrize("dim,keepdim", [(None, False), (1, True), ((0, 2), False)])
def test_vector_norm(ord, dim, keepdim):
    same(lambda x: torch.linalg.vector_norm(x, ord, dim, keepdim),
         lambda x: tn.linalg.vector_norm(x, ord, dim, keepdim), r(3, 4, 5))


@pytest.mark.parametrize("kwargs", [{}, dict(p=1, dim=1), dict(p="fro", dim=(0, 1)),
                                    dict(p=3, dim=-1, keepdim=True), dict(p=math.inf)])
def test_norm_function_and_method(kwargs):
    same(lambda x: torch.norm(x, **kwargs), lambda x: tn.norm(x, **kwargs), r(3, 4))
    same(lambda x: x.norm(**kwargs), lambda x: x.norm(**kwargs), r(3, 4))


@pytest.mark.parametrize("ord", [None, "fro", 1, -1, math.inf, -math.inf])
def test_linalg_norm_of_a_matrix(ord):
    same(lambda x: torch.linalg.norm(x, ord), lambda x: tn.linalg.norm(x, ord), r(4, 5))
    same(lambda x: torch.linalg.norm(x, ord, (0, 2), True),
         lambda x: tn.linalg.norm(x, ord, (0, 2), True), r(3, 2, 4))


def test_norm_errors():
    raises_like(lambda: torch.linalg.vector_norm(torch.arange(4)),
                lambda: tn.linalg.vector_norm(tn.arange(4)))
    raises_like(lambda: torch.linalg.norm(torch.ones(2, 2, 2), 1),
                lambda: tn.linalg.norm(tn.ones(2, 2, 2), 1))
    raises_like(lambda: torch.linalg.matrix_norm(torch.ones(3)),
                lambda: tn.linalg.matrix_norm(tn.ones(3)))
    raises_like(lambda: torch.linalg.vector_norm(torch.ones(0), -1),
                lambda: tn.linalg.vector_norm(tn.ones(0), -1))
    with pytest.raises(NotImplementedError, match="singular values"):
        tn.norm(tn.ones(2, 2), "nuc")


@pytest.mark.parametrize("p", [2, 1, 0, 3, 0.5, math.inf])
def test_cdist(p):
    same(lambda a, b: torch.cdist(a, b, p), lambda a, b: tn.cdist(a, b, p), r(4, 3), r(5, 3))
    same(lambda a, b: torch.cdist(a, b, p), lambda a, b: tn.cdist(a, b, p), r(2, 4, 3),
         r(2, 6, 3))


def test_cdist_errors():
    raises_like(lambda: torch.cdist(torch.ones(3, 2), torch.ones(3, 2), -1),
                lambda: tn.cdist(tn.ones(3, 2), tn.ones(3, 2), -1))
    raises_like(lambda: torch.cdist(torch.ones(3), torch.ones(3, 2)),
                lambda: tn.cdist(tn.ones(3), tn.ones(3, 2)))
    raises_like(lambda: torch.cdist(torch.ones(3, 2), torch.ones(3, 4)),
                lambda: tn.cdist(tn.ones(3, 2), tn.ones(3, 4)))


# --- meshgrid, tensordot, einsum --------------------------------------------------------------


@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_meshgrid(indexing):
    same(lambda a, b, c: torch.meshgrid(a, b, c, indexing=indexing),
         lambda a, b, c: tn.meshgrid(a, b, c, indexing=indexing), r(3), r(4), r(2))
    same(lambda a, b: torch.meshgrid([a, b], indexing=indexing),
         lambda a, b: tn.meshgrid([a, b], indexing=indexing), r(3), r(5))


def test_meshgrid_default_indexing_warns_and_is_ij():
    with pytest.warns(UserWarning, match="indexing"):
        a, b = tn.meshgrid(tn.arange(3), tn.arange(2))
    assert tuple(a.shape) == (3, 2)
    np.testing.assert_array_equal(b.numpy(), [[0, 1]] * 3)


def test_meshgrid_errors():
    raises_like(lambda: torch.meshgrid(torch.ones(2), indexing="yx"),
                lambda: tn.meshgrid(tn.ones(2), indexing="yx"))
    raises_like(lambda: torch.meshgrid(torch.ones(2, 2), indexing="ij"),
                lambda: tn.meshgrid(tn.ones(2, 2), indexing="ij"))


@pytest.mark.parametrize("shapes,dims", [(((3, 4), (4, 5)), 1), (((2, 3, 4), (3, 4, 5)), 2),
                                         (((3, 4, 2), (4, 5, 3)), ([1, 0], [0, 2])),
                                         (((3, 4), (5, 6)), 0)])
def test_tensordot(shapes, dims):
    same(lambda a, b: torch.tensordot(a, b, dims), lambda a, b: tn.tensordot(a, b, dims),
         *(r(*s) for s in shapes))


def test_tensordot_mismatch():
    raises_like(lambda: torch.tensordot(torch.ones(2, 3), torch.ones(4, 5), 1),
                lambda: tn.tensordot(tn.ones(2, 3), tn.ones(4, 5), 1))


@pytest.mark.parametrize("eq,shapes", [
    ("ij,kj->ik", [(3, 4), (5, 4)]), ("ij->j", [(3, 4)]), ("ij,ij->i", [(3, 4), (3, 4)]),
    ("ii", [(3, 3)]), ("ii->i", [(4, 4)]), ("ij->ji", [(3, 4)]), ("i,j->ij", [(3,), (4,)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("...ij,...jk", [(2, 3, 4), (2, 4, 5)]),
    ("ijk,jl,lk->i", [(2, 3, 4), (3, 5), (5, 4)]), ("ij,j", [(3, 4), (4,)]),
    ("bhqd,bhkd->bhqk", [(2, 3, 4, 5), (2, 3, 6, 5)]), ("i,i->", [(5,), (5,)]),
    ("bn,anm,bm->ba", [(2, 3), (4, 3, 5), (2, 5)])])
def test_einsum(eq, shapes):
    same(lambda *a: torch.einsum(eq, *a), lambda *a: tn.einsum(eq, *a),
         *(r(*s) for s in shapes), name=False, tol=1e-4)


def test_einsum_operand_list_and_errors():
    a, b = r(2, 3), r(3, 4)
    np.testing.assert_allclose(tn.einsum("ij,jk", [tn.tensor(a), tn.tensor(b)]).numpy(),
                               a @ b, rtol=1e-5, atol=1e-5)
    raises_like(lambda: torch.einsum("ij,jk->ik", torch.ones(2, 3), torch.ones(4, 5)),
                lambda: tn.einsum("ij,jk->ik", tn.ones(2, 3), tn.ones(4, 5)))
    raises_like(lambda: torch.einsum("ij,jk", torch.ones(2, 3)),
                lambda: tn.einsum("ij,jk", tn.ones(2, 3)))
    raises_like(lambda: torch.einsum("ijk", torch.ones(2, 3)),
                lambda: tn.einsum("ijk", tn.ones(2, 3)))
    raises_like(lambda: torch.einsum("ij->k", torch.ones(2, 3)),
                lambda: tn.einsum("ij->k", tn.ones(2, 3)))


# --- baddbmm / addbmm -------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [{}, dict(beta=0.5, alpha=2.0)])
def test_baddbmm_addbmm(kw):
    same(lambda c, a, b: torch.baddbmm(c, a, b, **kw), lambda c, a, b: tn.baddbmm(c, a, b, **kw),
         r(2, 3, 5), r(2, 3, 4), r(2, 4, 5))
    same(lambda c, a, b: torch.baddbmm(c, a, b, **kw), lambda c, a, b: tn.baddbmm(c, a, b, **kw),
         r(3, 1), r(2, 3, 4), r(2, 4, 5))
    same(lambda c, a, b: torch.addbmm(c, a, b, **kw), lambda c, a, b: tn.addbmm(c, a, b, **kw),
         r(3, 5), r(2, 3, 4), r(2, 4, 5))
    same(lambda c, a, b: c.addbmm(a, b, **kw), lambda c, a, b: c.addbmm(a, b, **kw),
         r(5), r(2, 3, 4), r(2, 4, 5))


def test_baddbmm_in_place_and_beta_zero_ignores_nan():
    c = np.full((2, 3, 5), np.nan, np.float32)
    a, b = r(2, 3, 4), r(2, 4, 5)
    out = tn.tensor(c).baddbmm_(tn.tensor(a), tn.tensor(b), beta=0)
    np.testing.assert_allclose(out.numpy(), a @ b, rtol=1e-5, atol=1e-5)
    x = tn.tensor(r(3, 5))
    x.addbmm_(tn.tensor(a), tn.tensor(b), alpha=0.5)
    assert not np.isnan(x.numpy()).any()


def test_batched_product_errors():
    raises_like(lambda: torch.baddbmm(torch.ones(2, 3, 5), torch.ones(2, 3, 4),
                                      torch.ones(2, 5, 5)),
                lambda: tn.baddbmm(tn.ones(2, 3, 5), tn.ones(2, 3, 4), tn.ones(2, 5, 5)))
    raises_like(lambda: torch.addbmm(torch.ones(3, 5), torch.ones(2, 3, 4), torch.ones(3, 4, 5)),
                lambda: tn.addbmm(tn.ones(3, 5), tn.ones(2, 3, 4), tn.ones(3, 4, 5)))
    with pytest.raises(RuntimeError, match="3D"):
        tn.baddbmm(tn.ones(3, 5), tn.ones(3, 4), tn.ones(4, 5))


# --- masked_fill, gather, scatter, scatter_add ------------------------------------------------

IDX = np.array([[0, 1, 2, 0], [1, 2, 0, 1]])


def test_masked_fill_and_in_place():
    mask = r(3, 4) > 0
    same(lambda x: x.masked_fill(torch.tensor(mask), 2.5),
         lambda x: x.masked_fill(tn.tensor(mask), 2.5), r(3, 4))
    same(lambda x, v: x.masked_fill(torch.tensor(mask), v),
         lambda x, v: x.masked_fill(tn.tensor(mask), v), r(3, 4), np.float32(1.5))
    same(lambda x: (x * 1).masked_fill_(torch.tensor(mask), -1.0),
         lambda x: (x * 1).masked_fill_(tn.tensor(mask), -1.0), r(3, 4))


@pytest.mark.parametrize("dim", [0, 1])
def test_gather_scatter_scatter_add(dim):
    idx = IDX if dim == 0 else IDX % 3
    ti, ni = torch.tensor(idx), tn.tensor(idx)
    same(lambda x: torch.gather(x, dim, ti), lambda x: tn.gather(x, dim, ni), r(3, 4))
    same(lambda x, s: torch.scatter(x, dim, ti, s), lambda x, s: tn.scatter(x, dim, ni, s),
         r(3, 4), r(2, 4))
    same(lambda x: x.scatter(dim, ti, 2.0), lambda x: x.scatter(dim, ni, 2.0), r(3, 4))
    same(lambda x, s: torch.scatter_add(x, dim, ti, s),
         lambda x, s: tn.scatter_add(x, dim, ni, s), r(3, 4), r(2, 4))
    same(lambda x, s: (x * 1).scatter_(dim, ti, s), lambda x, s: (x * 1).scatter_(dim, ni, s),
         r(3, 4), r(2, 4))
    same(lambda x, s: (x * 1).scatter_add_(dim, ti, s),
         lambda x, s: (x * 1).scatter_add_(dim, ni, s), r(3, 4), r(2, 4))


def test_scatter_errors():
    x = torch.randn(3, 4)
    raises_like(lambda: x.scatter(0, torch.tensor([[0, 5]]), 1.0),
                lambda: tn.randn(3, 4).scatter(0, tn.tensor([[0, 5]]), 1.0))
    raises_like(lambda: x.scatter(0, torch.tensor([[0.0, 1.0]]), 1.0),
                lambda: tn.randn(3, 4).scatter(0, tn.tensor([[0.0, 1.0]]), 1.0))
    raises_like(lambda: x.scatter(0, torch.zeros(4, 4, dtype=torch.long), torch.randn(2, 2)),
                lambda: tn.randn(3, 4).scatter(0, tn.zeros(4, 4, dtype=tn.long),
                                               tn.randn(2, 2)))
    raises_like(lambda: x.gather(0, torch.tensor([[3]])),
                lambda: tn.randn(3, 4).gather(0, tn.tensor([[3]])))


# --- histc ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(bins=4), dict(bins=7, min=-1, max=1), {},
                                dict(bins=3, min=5, max=5)])
def test_histc(kw):
    x = np.concatenate([r(50), np.float32([1.0, -1.0])])
    np.testing.assert_array_equal(tn.histc(tn.tensor(x), **kw).numpy(),
                                  torch.histc(torch.tensor(x), **kw).numpy())
    np.testing.assert_array_equal(tn.tensor(x).histc(**kw).numpy(),
                                  torch.tensor(x).histc(**kw).numpy())


def test_histc_errors_and_no_gradient():
    raises_like(lambda: torch.histc(torch.ones(3), bins=0), lambda: tn.histc(tn.ones(3), bins=0))
    raises_like(lambda: torch.histc(torch.ones(3), 3, 2, 1), lambda: tn.histc(tn.ones(3), 3, 2, 1))
    raises_like(lambda: torch.histc(torch.arange(3)), lambda: tn.histc(tn.arange(3)))
    raises_like(lambda: torch.histc(torch.ones(3, requires_grad=True)).sum().backward(),
                lambda: tn.histc(tn.ones(3, requires_grad=True)).sum().backward())


# --- generators -------------------------------------------------------------------------------

DRAWS = {
    "rand": lambda g: tn.rand(3, 2, generator=g),
    "randn": lambda g: tn.randn(4, generator=g),
    "randint": lambda g: tn.randint(0, 100, (5,), generator=g),
    "randperm": lambda g: tn.randperm(7, generator=g),
    "multinomial": lambda g: tn.multinomial(tn.ones(2, 6), 3, generator=g),
    "multinomial_replacement": lambda g: tn.multinomial(tn.ones(6), 4, True, generator=g),
    "normal_": lambda g: tn.empty(4).normal_(1.0, 2.0, generator=g),
    "uniform_": lambda g: tn.empty(4).uniform_(-1, 1, generator=g),
    "bernoulli": lambda g: tn.bernoulli(tn.full((8,), 0.5), generator=g),
    "bernoulli_method": lambda g: tn.full((8,), 0.5).bernoulli(generator=g),
    "normal": lambda g: tn.normal(0.0, 1.0, (3,), generator=g),
}


@pytest.mark.parametrize("name", sorted(DRAWS))
def test_generator_seeded_the_same_gives_the_same_numbers(name):
    draw = DRAWS[name]
    g = tn.Generator().manual_seed(123)
    first = [draw(g).numpy() for _ in range(3)]
    assert not all(np.array_equal(first[0], f) for f in first[1:]) or name.startswith("bern")
    g.manual_seed(123)
    again = [draw(g).numpy() for _ in range(3)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    # the global generator is not touched by draws from g
    tn.manual_seed(5)
    expect = tn.rand(3).numpy()
    tn.manual_seed(5)
    draw(tn.Generator().manual_seed(9))
    np.testing.assert_array_equal(tn.rand(3).numpy(), expect)


def test_generator_state_round_trip_and_seeds():
    g = tn.Generator()
    assert g.initial_seed() == 67280421310721
    assert g.manual_seed(7) is g and g.initial_seed() == 7
    tn.rand(5, generator=g)
    state = g.get_state()
    a = tn.randn(6, generator=g).numpy()
    g.set_state(state)
    np.testing.assert_array_equal(tn.randn(6, generator=g).numpy(), a)
    s = g.seed()
    assert isinstance(s, int) and g.initial_seed() == s
    assert str(g.device) == "cpu"
    assert tn.manual_seed(3) is tn.default_generator and tn.initial_seed() == 3
    assert isinstance(tn.seed(), int)


def test_generator_errors():
    with pytest.raises(TypeError):
        tn.rand(2, generator=42)
    with pytest.raises(TypeError):
        tn.Generator().manual_seed(1.5)
    with pytest.raises(RuntimeError):
        tn.Generator(device="cuda")


# --- adaptive max pooling ---------------------------------------------------------------------


@pytest.mark.parametrize("shape,size", [((2, 3, 7, 5), (5, 3)), ((2, 3, 7, 5), (2, None)),
                                        ((3, 7, 5), 4), ((2, 3, 8, 8), 4)])
def test_adaptive_max_pool2d(shape, size):
    same(lambda x: F.adaptive_max_pool2d(x, size, return_indices=True),
         lambda x: TF.adaptive_max_pool2d(x, size, return_indices=True), r(*shape))
    same(lambda x: torch.nn.AdaptiveMaxPool2d(size)(x),
         lambda x: tnn.AdaptiveMaxPool2d(size)(x), r(*shape))


@pytest.mark.parametrize("shape,size", [((2, 3, 7), 3), ((3, 9), 4), ((2, 3, 5), 5)])
def test_adaptive_max_pool1d(shape, size):
    same(lambda x: F.adaptive_max_pool1d(x, size, True),
         lambda x: TF.adaptive_max_pool1d(x, size, True), r(*shape))
    same(lambda x: torch.nn.AdaptiveMaxPool1d(size, return_indices=True)(x),
         lambda x: tnn.AdaptiveMaxPool1d(size, return_indices=True)(x), r(*shape))


def test_adaptive_max_pool_errors():
    raises_like(lambda: F.adaptive_max_pool1d(torch.ones(2, 3, 7), (2, 3)),
                lambda: TF.adaptive_max_pool1d(tn.ones(2, 3, 7), (2, 3)))
    raises_like(lambda: F.adaptive_max_pool2d(torch.ones(3, 5), 3),
                lambda: TF.adaptive_max_pool2d(tn.ones(3, 5), 3))
    raises_like(lambda: F.adaptive_max_pool1d(torch.ones(7), 2),
                lambda: TF.adaptive_max_pool1d(tn.ones(7), 2))
    raises_like(lambda: F.adaptive_max_pool2d(torch.ones(1, 4, 4, dtype=torch.long), 2),
                lambda: TF.adaptive_max_pool2d(tn.ones(1, 4, 4, dtype=tn.long), 2))


# --- LP pooling -------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [2, 1.5, math.inf])
@pytest.mark.parametrize("kw", [dict(kernel_size=(2, 3)),
                                dict(kernel_size=2, stride=1, ceil_mode=True)])
def test_lp_pool2d(p, kw):
    same(lambda x: F.lp_pool2d(x, p, **kw), lambda x: TF.lp_pool2d(x, p, **kw),
         r(2, 3, 6, 7, positive=True))
    same(lambda x: torch.nn.LPPool2d(p, **kw)(x), lambda x: tnn.LPPool2d(p, **kw)(x),
         r(3, 6, 7, positive=True))


@pytest.mark.parametrize("p", [2, 3.0, math.inf])
@pytest.mark.parametrize("kw", [dict(kernel_size=3), dict(kernel_size=3, stride=2,
                                                          ceil_mode=True)])
def test_lp_pool1d(p, kw):
    same(lambda x: F.lp_pool1d(x, p, **kw), lambda x: TF.lp_pool1d(x, p, **kw),
         r(2, 3, 8, positive=True))
    same(lambda x: torch.nn.LPPool1d(p, **kw)(x), lambda x: tnn.LPPool1d(p, **kw)(x),
         r(3, 8, positive=True))


# --- unfold / fold ----------------------------------------------------------------------------

GEOMETRIES = [dict(kernel_size=2), dict(kernel_size=(2, 3), dilation=(1, 2), padding=1,
                                        stride=(2, 1)),
              dict(kernel_size=3, padding=(0, 2), stride=2)]


@pytest.mark.parametrize("kw", GEOMETRIES)
def test_unfold_and_fold(kw):
    for shape in ((2, 3, 6, 7), (3, 6, 7)):
        same(lambda x: F.unfold(x, **kw), lambda x: TF.unfold(x, **kw), r(*shape))
        same(lambda x: torch.nn.Unfold(**kw)(x), lambda x: tnn.Unfold(**kw)(x), r(*shape))
    blocks = F.unfold(torch.zeros(1, 3, 6, 7), **kw).shape[1:]
    for shape in ((2,) + tuple(blocks), tuple(blocks)):
        same(lambda c: F.fold(c, (6, 7), **kw), lambda c: TF.fold(c, (6, 7), **kw), r(*shape))
        same(lambda c: torch.nn.Fold((6, 7), **kw)(c), lambda c: tnn.Fold((6, 7), **kw)(c),
             r(*shape))


def test_unfold_fold_errors():
    raises_like(lambda: F.unfold(torch.ones(2, 3, 4, 4), 5),
                lambda: TF.unfold(tn.ones(2, 3, 4, 4), 5))
    raises_like(lambda: F.unfold(torch.ones(2, 3, 4, 4), 0),
                lambda: TF.unfold(tn.ones(2, 3, 4, 4), 0))
    raises_like(lambda: F.unfold(torch.ones(4, 4), 2), lambda: TF.unfold(tn.ones(4, 4), 2))
    raises_like(lambda: F.fold(torch.ones(2, 10, 4), (3, 3), 2),
                lambda: TF.fold(tn.ones(2, 10, 4), (3, 3), 2))
    raises_like(lambda: F.fold(torch.ones(2, 12, 5), (3, 3), 2),
                lambda: TF.fold(tn.ones(2, 12, 5), (3, 3), 2))


# --- module reprs -----------------------------------------------------------------------------

MODULES = [
    ("AdaptiveMaxPool1d", (3,), {}), ("AdaptiveMaxPool2d", ((3, None),), {}),
    ("AdaptiveMaxPool2d", (4,), dict(return_indices=True)),
    ("LPPool1d", (1.5, 3), dict(stride=2, ceil_mode=True)), ("LPPool2d", (2, (2, 3)), {}),
    ("Unfold", ((2, 3),), dict(dilation=2, padding=1, stride=(1, 2))), ("Unfold", (2,), {}),
    ("Fold", ((4, 5), 2), {}), ("Fold", ((4, 5), (2, 3)), dict(padding=1, stride=2)),
    ("Embedding", (10, 3), dict(max_norm=1.0, norm_type=3.0)),
]


@pytest.mark.parametrize("cls,args,kwargs", MODULES)
def test_module_repr(cls, args, kwargs):
    assert repr(getattr(tnn, cls)(*args, **kwargs)) == repr(getattr(torch.nn, cls)(*args,
                                                                                  **kwargs))


# --- compiled layers against eager mode -------------------------------------------------------


@pytest.mark.parametrize("make,shape", [
    (lambda: tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.AdaptiveMaxPool2d((3, 2))), (2, 3, 9, 8)),
    (lambda: tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.AdaptiveMaxPool2d((4, None))),
     (2, 3, 9, 7)),
    (lambda: tnn.Sequential(tnn.Conv1d(3, 4, 3), tnn.AdaptiveMaxPool1d(4)), (2, 3, 11)),
    (lambda: tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.Unfold((2, 3), dilation=(1, 2), padding=1,
                                                            stride=(2, 1))), (2, 3, 9, 8)),
    (lambda: tnn.Sequential(tnn.Linear(6, 12), tnn.Fold((4, 5), 2)), (2, 12, 6)),
    (lambda: tnn.Sequential(tnn.Linear(6, 9), tnn.Fold((5, 5), 2, padding=1, stride=2)),
     (2, 12, 6)),
    (lambda: tnn.Sequential(tnn.Conv2d(3, 4, 3), tnn.Sigmoid(),
                            tnn.LPPool2d(2, (2, 3), stride=1, ceil_mode=True)), (2, 3, 9, 8)),
    (lambda: tnn.Sequential(tnn.Conv1d(3, 4, 3), tnn.Sigmoid(), tnn.LPPool1d(1.5, 3, 2)),
     (2, 3, 11)),
])
def test_compiled_layers_match_eager(make, shape):
    tn.manual_seed(0)
    check_compiled(make(), shape)


def test_compiled_adaptive_max_pool_indices_match_eager():
    tn.manual_seed(1)
    net = tnn.AdaptiveMaxPool2d((3, 4), return_indices=True)
    x = tn.randn(2, 3, 7, 9)
    vals, idx = tn.compile(net)(x)
    ev, ei = net(x)
    np.testing.assert_array_equal(idx.numpy(), ei.numpy())
    np.testing.assert_array_equal(vals.numpy(), ev.numpy())


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
def test_compiled_embedding_max_norm_renormalises_like_eager(norm_type):
    tn.manual_seed(2)
    eager = tnn.Sequential(tnn.Embedding(10, 4, max_norm=1.0, norm_type=norm_type),
                           tnn.Linear(4, 3))
    twin = tnn.Sequential(tnn.Embedding(10, 4, max_norm=1.0, norm_type=norm_type),
                          tnn.Linear(4, 3))
    twin.load_state_dict(eager.state_dict())
    before = eager[0].weight.detach().numpy().copy()
    compiled = tn.compile(twin)
    idx = tn.tensor([[1, 2, 2], [7, 1, 0]])
    ye, yc = eager(idx), compiled(idx)
    np.testing.assert_allclose(yc.detach().numpy(), ye.detach().numpy(), rtol=1e-5, atol=1e-5)
    ye.sum().backward()
    yc.sum().backward()
    w_e, w_c = eager[0].weight, twin[0].weight
    assert not np.allclose(w_e.detach().numpy(), before)  # some rows were renormalised
    np.testing.assert_allclose(w_c.detach().numpy(), w_e.detach().numpy(), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(w_c.grad.numpy(), w_e.grad.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError, match="index out of range"):
        compiled(tn.tensor([[11, 2, 2], [7, 1, 0]]))


def test_embedding_max_norm_matches_torch():
    w = r(10, 4) * 2
    ours = tnn.Embedding.from_pretrained(tn.tensor(w), freeze=False, max_norm=1.5)
    theirs = torch.nn.Embedding.from_pretrained(torch.tensor(w), freeze=False, max_norm=1.5)
    idx = [[1, 2, 2], [7, 1, 0]]
    yo, yt = ours(tn.tensor(idx)), theirs(torch.tensor(idx))
    np.testing.assert_allclose(yo.detach().numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    yo.sum().backward()
    yt.sum().backward()
    np.testing.assert_allclose(ours.weight.grad.numpy(), theirs.weight.grad.numpy())


class _Indexing(tnn.Module):
    def __init__(self, kind, dim):
        super().__init__()
        self.lin = tnn.Linear(4, 4)
        self.kind, self.dim = kind, dim

    def forward(self, x, idx):
        h = self.lin(x)
        if self.kind == "gather":
            return h.gather(self.dim, idx) * 2
        if self.kind == "scatter":
            return h.scatter(self.dim, idx, h[:2] * 3)
        if self.kind == "scatter_value":
            return h.scatter(self.dim, idx, 0.5)
        return h.scatter_add(self.dim, idx, h[:2].exp())


@pytest.mark.parametrize("kind", ["gather", "scatter", "scatter_value", "scatter_add"])
@pytest.mark.parametrize("dim", [0, 1])
def test_compiled_gather_scatter_match_eager_and_check_indices(kind, dim):
    tn.manual_seed(0)
    net = _Indexing(kind, dim)
    x = tn.randn(3, 4, requires_grad=True)
    idx = tn.tensor([[0, 1, 2, 0], [1, 2, 0, 1]] if dim == 0 else [[0, 3, 2, 1], [1, 2, 0, 3]])
    ye = net(x, idx)
    w = tn.randn(*ye.shape)
    (ye * w).sum().backward()
    gx, gw = x.grad.numpy().copy(), net.lin.weight.grad.numpy().copy()
    x.grad = None
    net.zero_grad()
    compiled = tn.compile(net)
    yc = compiled(x, idx)
    (yc * w).sum().backward()
    assert kind.split("_value")[0] in compiled.graph.op_counts()
    np.testing.assert_allclose(yc.detach().numpy(), ye.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), gx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(net.lin.weight.grad.numpy(), gw, rtol=1e-5, atol=1e-5)
    size = 3 if dim == 0 else 4
    with pytest.raises(RuntimeError, match=f"index 7 is out of bounds for dimension {dim} with "
                                           f"size {size}"):
        compiled(x, idx * 0 + 7)


class _AfterLinear(tnn.Module):
    def __init__(self, fn):
        super().__init__()
        self.lin = tnn.Linear(4, 4)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.lin(x))


@pytest.mark.parametrize("fn,shape", [
    (lambda h: h.norm(dim=1, keepdim=True) * h, (6, 4)),
    (lambda h: tn.linalg.vector_norm(h, 3, 1), (6, 4)),
    (lambda h: tn.linalg.vector_norm(h, math.inf, 0), (6, 4)),
    (lambda h: tn.cdist(h, h[:2] * 2), (6, 4)),
    (lambda h: tn.cdist(h, h[:2] * 2, 1.0), (6, 4)),
    (lambda h: tn.tensordot(h, h.t(), 1), (6, 4)),
    (lambda h: tn.einsum("ij,kj->ik", h, h), (6, 4)),
    (lambda h: tn.baddbmm(h.reshape(3, 2, 2), h.reshape(3, 2, 2), h.reshape(3, 2, 2),
                          beta=0.5, alpha=2.0), (3, 4)),
    (lambda h: tn.addbmm(h[:2, :2], h.reshape(6, 2, 2)[:3], h.reshape(6, 2, 2)[3:]), (6, 4)),
])
def test_compiled_tensor_ops_match_eager(fn, shape):
    tn.manual_seed(3)
    check_compiled(_AfterLinear(fn), shape)

"""The vision catalogue against PyTorch: PixelShuffle/PixelUnshuffle, Upsample (and the
Upsampling*2d aliases), F.interpolate, the padding layers and F.pad, and Conv1d/2d/3d with every
constructor argument. Values, gradients (inputs and parameters, on copied weights), reprs,
attributes, grad_fn names, errors and warnings in eager mode; then every layer under
tracenet.compile against eager mode."""
import re
import warnings

import numpy as np
import pytest

import tracenet as tn
import tracenet.nn as tnn
import tracenet.nn.functional as TF

from compile_checks import check_compiled

torch = pytest.importorskip("torch")
F = torch.nn.functional


def rand(*shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def numel(shape):
    return int(np.prod(shape))


def copy_params(src, dst):
    theirs = dict(src.named_parameters())
    ours = dict(dst.named_parameters())
    assert list(ours) == list(theirs)
    for name, p in ours.items():
        p.data = tn.tensor(theirs[name].detach().numpy().copy())


def twins(name, *args, **kwargs):
    """The same layer in both libraries (float64), tracenet's holding torch's parameters."""
    th = getattr(torch.nn, name)(*args, **kwargs).double()
    ours = getattr(tnn, name)(*args, **kwargs).double()
    copy_params(th, ours)
    return th, ours


def run_both(th_fn, tn_fn, x, seed=1, rtol=1e-10, atol=1e-12, params=()):
    """Forward and backward (with a random cotangent) in both libraries; compares the outputs,
    the input gradients, the gradients of the parameter pairs and the grad_fn names."""
    xt = torch.tensor(x, requires_grad=True)
    xn = tn.tensor(x, requires_grad=True)
    yt, yn = th_fn(xt), tn_fn(xn)
    assert tuple(yn.shape) == tuple(yt.shape)
    np.testing.assert_allclose(yn.detach().numpy(), yt.detach().numpy(), rtol=rtol, atol=atol)
    assert type(yn.grad_fn).__name__ == type(yt.grad_fn).__name__
    cot = rand(*yt.shape, seed=seed, dtype=x.dtype)
    yt.backward(torch.tensor(cot))
    yn.backward(tn.tensor(cot))
    np.testing.assert_allclose(xn.grad.numpy(), xt.grad.numpy(), rtol=rtol, atol=atol)
    for pt, pn in params:
        np.testing.assert_allclose(pn.grad.numpy(), pt.grad.numpy(), rtol=rtol, atol=atol * 10)
    return yt, yn


def _sets_sorted(message):
    """A message with the items of each printed Python set sorted: a set's iteration order
    depends on the hash seed the printing module's bytecode was compiled with."""
    return re.sub(r"\{([^{}]*)\}", lambda m: "{" + ", ".join(sorted(m.group(1).split(", ")))
                  + "}", message)


def same_error(fn):
    """``fn(lib)`` raises the same exception type with the same message for torch and
    tracenet."""
    with pytest.raises(Exception) as theirs:
        fn(torch)
    with pytest.raises(type(theirs.value)) as ours:
        fn(tn)
    assert _sets_sorted(str(ours.value)) == _sets_sorted(str(theirs.value))


# --- pixel shuffle --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,factor,shape", [
    ("PixelShuffle", 2, (2, 8, 3, 4)),
    ("PixelShuffle", 3, (18, 2, 3)),
    ("PixelShuffle", 1, (2, 3, 4, 5)),
    ("PixelShuffle", 2, (2, 1, 4, 3, 2)),
    ("PixelUnshuffle", 2, (2, 3, 4, 6)),
    ("PixelUnshuffle", 3, (2, 6, 9)),
    ("PixelUnshuffle", 2, (3, 2, 1, 2, 4)),
])
def test_pixel_shuffle_layers_match_torch(cls, factor, shape):
    th, ours = twins(cls, factor)
    assert repr(ours) == repr(th)
    yt, yn = run_both(th, ours, rand(*shape))
    assert yn._base is None and yn.is_contiguous()


def test_pixel_shuffle_functional_and_float32():
    x = rand(2, 12, 3, 2, dtype=np.float32)
    run_both(lambda t: F.pixel_unshuffle(F.pixel_shuffle(t, 2), 2) * 2,
             lambda t: TF.pixel_unshuffle(TF.pixel_shuffle(t, 2), 2) * 2, x, rtol=0, atol=0)
    assert tn.nn.PixelShuffle(3).upscale_factor == 3
    assert tn.nn.PixelUnshuffle(downscale_factor=4).downscale_factor == 4


@pytest.mark.parametrize("call", [
    lambda lib: lib.nn.functional.pixel_shuffle(lib.randn(1, 6, 3, 4), 2),
    lambda lib: lib.nn.functional.pixel_shuffle(lib.randn(8, 3), 2),
    lambda lib: lib.nn.functional.pixel_shuffle(lib.randn(2, 8, 3, 4), 0),
    lambda lib: lib.nn.functional.pixel_shuffle(lib.randn(2, 8, 3, 4), -1),
    lambda lib: lib.nn.functional.pixel_shuffle(lib.randn(2, 8, 3, 4), 2.0),
    lambda lib: lib.nn.PixelShuffle(2.0)(lib.randn(1, 8, 2, 2)),
    lambda lib: lib.nn.functional.pixel_unshuffle(lib.randn(1, 2, 5, 4), 2),
    lambda lib: lib.nn.functional.pixel_unshuffle(lib.randn(1, 2, 6, 5), 2),
    lambda lib: lib.nn.functional.pixel_unshuffle(lib.randn(6, 4), 2),
    lambda lib: lib.nn.functional.pixel_unshuffle(lib.randn(1, 2, 6, 4), 0),
])
def test_pixel_shuffle_errors(call):
    same_error(call)


# --- upsampling -------------------------------------------------------------------------------


UPSAMPLE_LAYERS = [
    ("Upsample", dict(scale_factor=2), (2, 3, 4, 5)),
    ("Upsample", dict(scale_factor=1.7), (2, 3, 4, 5)),
    ("Upsample", dict(size=(5, 3)), (2, 3, 4, 5)),
    ("Upsample", dict(size=7), (2, 3, 4)),
    ("Upsample", dict(scale_factor=(2, 1.5, 0.5)), (1, 2, 3, 4, 6)),
    ("Upsample", dict(scale_factor=2, mode="bilinear"), (2, 3, 4, 5)),
    ("Upsample", dict(scale_factor=2.5, mode="bilinear", align_corners=True), (2, 3, 4, 5)),
    ("Upsample", dict(size=(3, 7), mode="bilinear", align_corners=False), (2, 3, 4, 5)),
    ("Upsample", dict(scale_factor=1.3, mode="bilinear", recompute_scale_factor=True),
     (2, 3, 4, 5)),
    ("Upsample", dict(scale_factor=(1.3, 0.6), mode="nearest", recompute_scale_factor=False),
     (2, 3, 4, 5)),
    ("Upsample", dict(scale_factor=3, mode="linear", align_corners=True), (2, 3, 4)),
    ("Upsample", dict(size=(3, 5, 2), mode="trilinear"), (1, 2, 2, 3, 4)),
    ("Upsample", dict(scale_factor=1.5, mode="bicubic", align_corners=False), (1, 2, 4, 5)),
    ("Upsample", dict(scale_factor=2.2, mode="nearest-exact"), (1, 2, 4, 5)),
    ("UpsamplingNearest2d", dict(scale_factor=2), (2, 3, 4, 5)),
    ("UpsamplingNearest2d", dict(size=(5, 7)), (2, 3, 4, 5)),
    ("UpsamplingBilinear2d", dict(scale_factor=2), (2, 3, 4, 5)),
    ("UpsamplingBilinear2d", dict(size=(3, 8)), (2, 3, 4, 5)),
]


@pytest.mark.parametrize("cls,kwargs,shape", UPSAMPLE_LAYERS)
def test_upsample_layers_match_torch(cls, kwargs, shape):
    th, ours = twins(cls, **kwargs)
    assert repr(ours) == repr(th)
    for attr in ("name", "size", "scale_factor", "mode", "align_corners",
                 "recompute_scale_factor"):
        assert getattr(ours, attr) == getattr(th, attr), attr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_both(th, ours, rand(*shape))


def _interpolate_cases():
    cases = []
    for shape, modes in (((2, 3, 5), ("nearest", "nearest-exact", "linear")),
                         ((1, 2, 4, 5), ("nearest", "nearest-exact", "bilinear", "bicubic")),
                         ((1, 2, 3, 2, 4), ("nearest", "nearest-exact", "trilinear"))):
        n = len(shape) - 2
        for mode in modes:
            interp = mode not in ("nearest", "nearest-exact")
            for how in ({"size": tuple(range(3, 3 + n))}, {"size": 2},
                        {"scale_factor": 2.0}, {"scale_factor": 1.3},
                        {"scale_factor": (0.5, 2.5, 1.6)[:n]},
                        {"scale_factor": 0.7, "recompute_scale_factor": True},
                        {"scale_factor": 2.2, "recompute_scale_factor": False}):
                for ac in ((None, True, False) if interp else (None,)):
                    kw = dict(how, mode=mode, align_corners=ac)
                    cases.append((shape, kw))
    for mode in ("bilinear", "bicubic"):
        for how in ({"size": (2, 3)}, {"scale_factor": 0.45}, {"size": (7, 3)}):
            for ac in (False, True):
                cases.append(((1, 2, 6, 7), dict(how, mode=mode, align_corners=ac,
                                                 antialias=True)))
    return cases


@pytest.mark.parametrize("shape,kwargs", _interpolate_cases())
def test_interpolate_matches_torch(shape, kwargs):
    run_both(lambda t: F.interpolate(t, **kwargs), lambda t: TF.interpolate(t, **kwargs),
             rand(*shape))


@pytest.mark.parametrize("shape,kwargs", [((1, 2, 7, 9), dict(size=(3, 4))),
                                          ((2, 3, 7), dict(scale_factor=0.5)),
                                          ((1, 2, 4, 5, 6), dict(size=2))])
def test_interpolate_area(shape, kwargs):
    run_both(lambda t: F.interpolate(t, mode="area", **kwargs),
             lambda t: TF.interpolate(t, mode="area", **kwargs), rand(*shape))


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "bicubic"])
def test_interpolate_float32(mode):
    x = rand(2, 3, 5, 4, dtype=np.float32)
    run_both(lambda t: F.interpolate(t, scale_factor=1.7, mode=mode),
             lambda t: TF.interpolate(t, scale_factor=1.7, mode=mode), x, rtol=1e-5, atol=1e-5)


def test_nearest_shortcuts_of_torch_kernels():
    # torch's 2-d nearest kernel (and every nearest gradient) copies an unchanged axis and
    # halves the index of a doubled one whatever the scale factor; 1-d and 3-d kernels do not
    for shape, sf in (((1, 2, 3), 1.3), ((1, 2, 2), 2.2), ((1, 1, 3, 2), (1.3, 2.2)),
                      ((1, 1, 2, 3, 2), (2.2, 1.3, 1.0))):
        run_both(lambda t: F.interpolate(t, scale_factor=sf),
                 lambda t: TF.interpolate(t, scale_factor=sf), rand(*shape))
    run_both(lambda t: F.interpolate(t, scale_factor=(1.3, 1.0), mode="bilinear",
                                     antialias=True),
             lambda t: TF.interpolate(t, scale_factor=(1.3, 1.0), mode="bilinear",
                                      antialias=True), rand(1, 1, 3, 2))


def test_upsample_grad_fn_names():
    x = rand(1, 2, 4, 4)
    for kw, dims in ((dict(mode="nearest"), 2), (dict(mode="bilinear"), 2),
                     (dict(mode="bicubic"), 2), (dict(mode="nearest-exact"), 1),
                     (dict(mode="linear"), 1), (dict(mode="trilinear"), 3),
                     (dict(mode="nearest"), 3), (dict(mode="bilinear", antialias=True), 2),
                     (dict(mode="bicubic", antialias=True), 2)):
        a = x if dims == 2 else (x[0] if dims == 1 else x[None])
        yt = F.interpolate(torch.tensor(a, requires_grad=True), scale_factor=0.5, **kw)
        xn = tn.tensor(a, requires_grad=True)
        yn = TF.interpolate(xn, scale_factor=0.5, **kw)
        assert type(yn.grad_fn).__name__ == type(yt.grad_fn).__name__
        # the gradient of the gradient is the resize again
        vt = torch.tensor(rand(*yt.shape), requires_grad=True)
        gt, = torch.autograd.grad(yt, yt.grad_fn.next_functions[0][0].variable, vt,
                                  create_graph=True)
        vn = tn.tensor(rand(*yt.shape), requires_grad=True)
        gn, = tn.autograd.grad(yn, xn, vn, create_graph=True)
        assert type(gn.grad_fn).__name__ == type(gt.grad_fn).__name__
        np.testing.assert_allclose(gn.detach().numpy(), gt.detach().numpy(), atol=1e-12)


def test_deprecated_upsample_functions_warn():
    x = rand(1, 2, 3, 4)
    for name, kw in (("upsample", dict(scale_factor=2)), ("upsample_nearest",
                                                          dict(scale_factor=2)),
                     ("upsample_bilinear", dict(size=(5, 6))), ("upsample", dict(
                         size=3, mode="bilinear", align_corners=True))):
        with pytest.warns(UserWarning) as theirs:
            yt = getattr(F, name)(torch.tensor(x), **kw)
        with pytest.warns(UserWarning) as ours:
            yn = getattr(TF, name)(tn.tensor(x), **kw)
        assert [str(w.message) for w in ours] == [str(w.message) for w in theirs]
        assert ours[0].filename == __file__
        np.testing.assert_allclose(yn.numpy(), yt.numpy(), atol=1e-12)


@pytest.mark.parametrize("call", [
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), scale_factor=2,
                                              align_corners=True),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), size=3, scale_factor=2),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4)),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), size=(3, 4, 5)),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), size=[2]),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), scale_factor=(2, 3, 4)),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), scale_factor=2,
                                              mode="foo"),
    lambda lib: lib.nn.functional.interpolate(lib.randn(2, 3, 5), scale_factor=2,
                                              mode="bilinear"),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4, 5), scale_factor=2,
                                              mode="bilinear"),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), scale_factor=2,
                                              mode="linear"),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), scale_factor=2,
                                              mode="trilinear"),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3), scale_factor=2,
                                              mode="bicubic"),
    lambda lib: lib.nn.functional.interpolate(lib.randn(3, 4), scale_factor=2),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), size=5,
                                              recompute_scale_factor=True),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), scale_factor=0.2),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3), scale_factor=0.2),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 1, 2, 2), scale_factor=0.5),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), size=-2),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 0, 4), size=(2, 2)),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 0, 3, 4), scale_factor=2),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), size=(5.0, 6)),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3, 4), scale_factor=2,
                                              antialias=True),
    lambda lib: lib.nn.functional.interpolate(lib.randn(1, 2, 3), scale_factor=2,
                                              mode="linear", antialias=True),
    lambda lib: lib.nn.functional.interpolate(lib.ones(1, 2, 3, 3, dtype=lib.long),
                                              scale_factor=2),
    lambda lib: lib.nn.functional.interpolate(lib.ones(1, 2, 3, dtype=lib.long),
                                              scale_factor=2, mode="linear"),
    lambda lib: lib.nn.functional.interpolate(lib.ones(1, 2, 3, 3, dtype=lib.long),
                                              scale_factor=2, mode="bicubic"),
    lambda lib: lib.nn.functional.interpolate(lib.ones(1, 2, 3, 3, dtype=lib.long),
                                              scale_factor=2, mode="bilinear", antialias=True),
    lambda lib: lib.nn.Upsample()(lib.randn(1, 2, 3, 4)),
    lambda lib: lib.nn.Upsample(scale_factor=2, align_corners=True)(lib.randn(1, 2, 3, 4)),
    lambda lib: lib.nn.Upsample(scale_factor=[2, 3]),
    lambda lib: lib.nn.UpsamplingBilinear2d(scale_factor=2)(lib.randn(1, 2, 3, 4, 5)),
])
def test_interpolate_errors(call):
    same_error(call)


def test_upsample_constructor_forms():
    for kw in (dict(), dict(size=2, scale_factor=2), dict(scale_factor=0),
               dict(size=[2, 3], mode="foo"), dict(scale_factor=(2, 3)),
               dict(scale_factor=2, mode="bilinear", align_corners=False,
                    recompute_scale_factor=True)):
        assert repr(tnn.Upsample(**kw)) == repr(torch.nn.Upsample(**kw))
    assert repr(tnn.UpsamplingBilinear2d(3, 2)) == repr(torch.nn.UpsamplingBilinear2d(3, 2))
    assert tnn.UpsamplingBilinear2d(3).align_corners is True
    assert tnn.UpsamplingNearest2d(scale_factor=3).align_corners is None


# --- padding ----------------------------------------------------------------------------------


PAD_LAYERS = [
    ("ZeroPad1d", (2,), (2, 3, 4)), ("ZeroPad1d", ((1, 3),), (3, 4)),
    ("ZeroPad2d", (2,), (2, 3, 4, 5)), ("ZeroPad2d", ((1, 1, 2, 0),), (2, 3, 4, 5)),
    ("ZeroPad2d", ((-1, 1, 0, 2),), (3, 4, 5)), ("ZeroPad3d", ((1, 0, 2, 1, 0, 1),),
                                                 (1, 2, 3, 4, 5)),
    ("ConstantPad1d", (2, 3.5), (2, 3, 4)), ("ConstantPad2d", ((1, 2, 0, 1), -1.0), (2, 3, 4)),
    ("ConstantPad2d", (1, 2), (1, 2, 3, 4)), ("ConstantPad3d", (1, 0.5), (2, 3, 4, 5)),
    ("ReflectionPad1d", (2,), (2, 3, 4)), ("ReflectionPad1d", ((3, 1),), (3, 5)),
    ("ReflectionPad2d", (1,), (2, 3, 4, 5)), ("ReflectionPad2d", ((1, 2, 3, 0),), (3, 4, 5)),
    ("ReflectionPad2d", ((-1, 2, 1, -1),), (1, 3, 4, 5)),
    ("ReflectionPad3d", ((1, 0, 2, 1, 1, 1),), (1, 2, 3, 4, 5)),
    ("ReplicationPad1d", ((0, 3),), (2, 3, 4)), ("ReplicationPad2d", (2,), (2, 3, 4, 5)),
    ("ReplicationPad2d", ((1, 2, 3, 4),), (3, 4, 5)), ("ReplicationPad3d", (1,), (2, 3, 4, 5)),
    ("CircularPad1d", ((2, 1),), (2, 3, 4)), ("CircularPad2d", ((1, 2, 3, 0),), (1, 3, 4, 5)),
    ("CircularPad3d", (1,), (1, 2, 3, 4, 5)),
]


@pytest.mark.parametrize("cls,args,shape", PAD_LAYERS)
def test_padding_layers_match_torch(cls, args, shape):
    th, ours = twins(cls, *args)
    assert repr(ours) == repr(th)
    assert ours.padding == th.padding
    if hasattr(th, "value"):
        assert ours.value == th.value and type(ours.value) is type(th.value)
    run_both(th, ours, rand(*shape))


def test_padding_reprs():
    assert repr(tnn.ZeroPad2d((1, 1, 2, 0))) == "ZeroPad2d((1, 1, 2, 0))"
    for cls, args in (("ZeroPad2d", ([1, 2],)), ("ConstantPad2d", ((1, 2, 3), 1)),
                      ("ReflectionPad1d", (1.5,)), ("ReplicationPad3d", ([1, 2, 3, 4, 5, 6],)),
                      ("CircularPad2d", (3,)), ("ConstantPad3d", (2, 3.5))):
        assert repr(getattr(tnn, cls)(*args)) == repr(getattr(torch.nn, cls)(*args))


def _pad_cases():
    cases = []
    for mode in ("constant", "reflect", "replicate", "circular"):
        for shape, pads in (((2, 5), (1, 2)), ((2, 3, 5), (2, 0)), ((2, 3, 4, 5), (1, 2, 3, 0)),
                            ((3, 4, 5), (0, 1, 1, 2)), ((1, 2, 3, 4, 5), (1, 1, 0, 2, 2, 1)),
                            ((2, 3, 4, 5), (-1, 2, 1, -2)), ((2, 3, 4, 5), (2, 2, 2, 2, 2, 2))):
            cases.append((mode, shape, pads))
    cases.append(("constant", (2, 3, 4), (1, 1, 1, 1, 1, 1)))
    cases.append(("constant", (2, 3), (-1, -1, 2, 0)))
    return cases


@pytest.mark.parametrize("mode,shape,pads", _pad_cases())
def test_pad_matches_torch(mode, shape, pads):
    def call(lib_f):
        return lambda t: lib_f.pad(t, pads, mode=mode, value=2.5 if mode == "constant" else None)
    x = rand(*shape)
    try:
        F.pad(torch.tensor(x), pads, mode=mode)
    except (RuntimeError, NotImplementedError):
        same_error(lambda lib: call(lib.nn.functional)(lib.tensor(x)))
        return
    run_both(call(F), call(TF), x)


@pytest.mark.parametrize("call", [
    lambda lib: lib.nn.functional.pad(lib.randn(1, 2, 3, 4), (4, 4, 0, 0), mode="reflect"),
    lambda lib: lib.nn.functional.pad(lib.randn(1, 4, 3), (-2, -2, 0, 0), mode="reflect"),
    lambda lib: lib.nn.functional.pad(lib.randn(1, 4, 3), (-2, -2, 0, 0), mode="replicate"),
    lambda lib: lib.nn.functional.pad(lib.randn(1, 4, 3), (-2, -3, -3, -3), mode="replicate"),
    lambda lib: lib.nn.functional.pad(lib.randn(4, 3), (-2, -2), mode="reflect"),
    lambda lib: lib.nn.functional.pad(lib.randn(3, 3, 2), (2, 3, -2, -2), mode="circular"),
    lambda lib: lib.nn.functional.pad(lib.randn(3, 3, 2), (-2, -2, 4, 0), mode="circular"),
    lambda lib: lib.nn.functional.pad(lib.randn(1, 2, 3), (4, 0), mode="circular"),
    lambda lib: lib.nn.functional.pad(lib.randn(1, 2, 3), (1, 1), mode="foo"),
    lambda lib: lib.nn.functional.pad(lib.randn(1, 2, 3), (1, 1, 1)),
    lambda lib: lib.nn.functional.pad(lib.randn(1, 2, 3), (1, 1), mode="reflect", value=1.0),
    lambda lib: lib.nn.functional.pad(lib.randn(1, 2, 3), (1,) * 8),
    lambda lib: lib.nn.functional.pad(lib.randn(1, 2, 3), (-2, -2)),
    lambda lib: lib.nn.functional.pad(lib.ones(1, 2, 3, dtype=lib.bool), (1, 1), mode="reflect"),
    lambda lib: lib.nn.functional.pad(lib.ones(1, 1, 2, 3, dtype=lib.bool), (1,) * 6,
                                      mode="replicate"),
    lambda lib: lib.nn.ReflectionPad2d(1)(lib.randn(4, 5)),
    lambda lib: lib.nn.ReflectionPad1d(1)(lib.randn(1, 2, 3, 4)),
    lambda lib: lib.nn.ReplicationPad3d(1)(lib.randn(2, 3, 4)),
    lambda lib: lib.nn.CircularPad2d(1)(lib.randn(2, 3)),
    lambda lib: lib.nn.CircularPad1d(1)(lib.randn(1, 2, 3, 4)),
    lambda lib: lib.nn.ZeroPad3d(1)(lib.randn(2, 3)),
    lambda lib: lib.nn.ConstantPad2d(1),
])
def test_padding_errors(call):
    same_error(call)


def test_constant_pad_of_integer_and_bool_tensors():
    for dtype, value in (("long", 2.5), ("long", -1.7), ("bool", 2.5), ("bool", 0)):
        def call(lib):
            x = lib.ones(1, 2, 3, dtype=getattr(lib, dtype))
            return lib.nn.ConstantPad2d(1, value)(x)
        yt, yn = call(torch), call(tn)
        assert yn.tolist() == yt.tolist() and str(yn.dtype) == str(yt.dtype)
    x = np.arange(6).reshape(1, 2, 3)
    for mode in ("reflect", "replicate", "circular"):
        assert TF.pad(tn.tensor(x), (1, 2), mode=mode).tolist() == \
            F.pad(torch.tensor(x), (1, 2), mode=mode).tolist()


# --- convolution ------------------------------------------------------------------------------


CONV_LAYERS = [
    ("Conv2d", (16, 33, (3, 5)), dict(stride=(2, 1), padding=(4, 2), dilation=(3, 1)),
     (20, 16, 50, 100)),
    ("Conv2d", (4, 6, 3), {}, (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 3), dict(padding="same", padding_mode="reflect"), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 4), dict(padding="same"), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, (2, 3)), dict(padding="same", dilation=(3, 2), padding_mode="circular"),
     (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 3), dict(padding="valid", bias=False), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, 3), dict(padding=2, padding_mode="replicate", groups=2, stride=2),
     (2, 4, 7, 8)),
    ("Conv2d", (4, 8, 3), dict(padding=(1, 2), padding_mode="circular", groups=4), (2, 4, 7, 8)),
    ("Conv2d", (4, 6, [3, 2]), dict(stride=[2, 1], padding=[1, 0], dilation=[1, 2]),
     (4, 7, 8)),
    ("Conv2d", (4, 6, 3), dict(padding=1, padding_mode="reflect"), (4, 7, 8)),
    ("Conv1d", (3, 5, 3), {}, (2, 3, 9)),
    ("Conv1d", (3, 6, 2), dict(stride=2, padding=1, dilation=2, groups=3, bias=False,
                               padding_mode="circular"), (2, 3, 9)),
    ("Conv1d", (3, 5, 4), dict(padding="same", padding_mode="replicate"), (3, 9)),
    ("Conv1d", (2, 4, 3), dict(padding=2, padding_mode="reflect", stride=3), (2, 2, 8)),
    ("Conv3d", (2, 4, 3), {}, (2, 2, 5, 6, 7)),
    ("Conv3d", (4, 4, (1, 2, 3)), dict(stride=(1, 2, 1), padding=(0, 1, 2), dilation=(2, 1, 1),
                                       groups=2, padding_mode="reflect"), (2, 4, 5, 6, 7)),
    ("Conv3d", (2, 3, 2), dict(padding="same", padding_mode="circular"), (2, 5, 4, 3)),
    ("Conv3d", (2, 3, 3), dict(padding=1, padding_mode="replicate", bias=False),
     (1, 2, 5, 4, 3)),
    ("Conv3d", (2, 3, 3), dict(padding="same", dilation=2), (1, 2, 5, 6, 4)),
]


@pytest.mark.parametrize("cls,args,kwargs,shape", CONV_LAYERS)
def test_conv_layers_match_torch(cls, args, kwargs, shape):
    th, ours = twins(cls, *args, **kwargs)
    assert repr(ours) == repr(th)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "transposed", "output_padding", "groups", "padding_mode",
                 "_reversed_padding_repeated_twice"):
        assert getattr(ours, attr) == getattr(th, attr), attr
    params = [(th.weight, ours.weight)] + ([(th.bias, ours.bias)] if th.bias is not None
                                           else [])
    if numel(shape) > 100_000:  # the large case runs in single precision, as it would be used
        th.float(), ours.float()
        run_both(th, ours, rand(*shape, dtype=np.float32), rtol=1e-4, atol=1e-3, params=params)
    else:
        run_both(th, ours, rand(*shape), rtol=1e-9, atol=1e-10, params=params)


def test_conv_forward_hook_point_and_float32():
    th, ours = twins("Conv2d", 3, 4, 3, padding=1, padding_mode="reflect")
    th, ours = th.float(), ours.float()
    x = rand(2, 3, 6, 5, dtype=np.float32)
    w = rand(4, 3, 3, 3, seed=3, dtype=np.float32)
    yt = th._conv_forward(torch.tensor(x), torch.tensor(w), None)
    yn = ours._conv_forward(tn.tensor(x), tn.tensor(w), None)
    np.testing.assert_allclose(yn.numpy(), yt.detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call", [
    lambda lib: lib.nn.Conv2d(4, 4, 3, groups=0),
    lambda lib: lib.nn.Conv2d(3, 4, 3, groups=2),
    lambda lib: lib.nn.Conv2d(4, 3, 3, groups=2),
    lambda lib: lib.nn.Conv2d(4, 4, 3, padding="foo"),
    lambda lib: lib.nn.Conv2d(4, 4, 3, padding="same", stride=(1, 2)),
    lambda lib: lib.nn.Conv2d(4, 4, 3, padding_mode="foo"),
    lambda lib: lib.nn.Conv2d(4, 4, (3, 3, 3))(lib.randn(1, 4, 5, 5, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 0)(lib.randn(1, 4, 5, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 3)(lib.randn(1, 3, 5, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 3)(lib.randn(1, 4, 2, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 3)(lib.randn(4, 5)),
    lambda lib: lib.nn.Conv1d(4, 4, 3)(lib.randn(1, 1, 4, 5)),
    lambda lib: lib.nn.Conv3d(4, 4, 3)(lib.randn(4, 5, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 3, padding=5, padding_mode="reflect")(lib.randn(1, 4, 5, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 3, stride=0)(lib.randn(1, 4, 5, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 3, padding=-1)(lib.randn(1, 4, 5, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 3, dilation=0)(lib.randn(1, 4, 5, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 3)(lib.randn(1, 4, 5, 5, dtype=lib.float64)),
    lambda lib: lib.nn.Conv2d(4, 4, (3,))(lib.randn(1, 4, 5, 5)),
    lambda lib: lib.nn.Conv2d(4, 4, 3, padding=(1,), padding_mode="reflect")(
        lib.randn(1, 4, 5, 5)),
])
def test_conv_errors(call):
    same_error(call)


def test_conv_padding_float_is_a_type_error():
    for kw in (dict(padding=1.0), dict(stride=1.0)):
        with pytest.raises(TypeError):
            tnn.Conv2d(4, 4, 3, **kw)(tn.randn(1, 4, 5, 5))


# --- compiled ---------------------------------------------------------------------------------


@pytest.fixture
def _cache(tmp_path_factory, monkeypatch):
    d = tmp_path_factory.getbasetemp() / "tracenet-cache"
    monkeypatch.setenv("TRACENET_CACHE_DIR", str(d))


class _Fn(tnn.Module):
    def __init__(self, fn, *mods):
        super().__init__()
        self.fn = fn
        self.mods = tnn.ModuleList(mods)

    def forward(self, x):
        return self.fn(x, *self.mods)


COMPILED = {
    "pixel_shuffle": (lambda: tnn.Sequential(tnn.Conv2d(2, 8, 3, padding=1),
                                             tnn.PixelShuffle(2)), (2, 2, 4, 5)),
    "pixel_unshuffle": (lambda: tnn.Sequential(tnn.PixelUnshuffle(2), tnn.Conv2d(8, 3, 1)),
                        (2, 2, 4, 6)),
    "upsample_nearest": (lambda: tnn.Sequential(tnn.Upsample(scale_factor=2),
                                                tnn.Conv2d(2, 3, 3)), (2, 2, 4, 5)),
    "upsample_nearest_fractional": (lambda: tnn.Sequential(tnn.Upsample(scale_factor=1.7),
                                                           tnn.Tanh()), (2, 2, 4, 5)),
    "upsample_nearest_1d_3d": (lambda: _Fn(lambda x: TF.interpolate(
        TF.interpolate(x, scale_factor=(1.0, 2.2, 1.5)).flatten(2, 3), size=9).tanh()),
        (1, 2, 3, 2, 4)),
    "upsample_nearest_exact": (lambda: _Fn(lambda x: TF.interpolate(
        x, scale_factor=1.6, mode="nearest-exact").tanh()), (2, 2, 4, 5)),
    "upsample_bilinear": (lambda: tnn.Sequential(tnn.Upsample(size=(7, 9), mode="bilinear"),
                                                 tnn.Tanh()), (2, 2, 4, 5)),
    "upsampling_bilinear2d": (lambda: tnn.Sequential(tnn.UpsamplingBilinear2d(scale_factor=2),
                                                     tnn.Tanh()), (2, 2, 4, 5)),
    "upsampling_nearest2d": (lambda: tnn.Sequential(tnn.UpsamplingNearest2d(size=(5, 3)),
                                                    tnn.Tanh()), (2, 2, 4, 5)),
    "upsample_linear": (lambda: tnn.Sequential(tnn.Upsample(scale_factor=2.5, mode="linear",
                                                            align_corners=True), tnn.Tanh()),
                        (2, 2, 5)),
    "upsample_trilinear": (lambda: tnn.Sequential(tnn.Upsample(scale_factor=(1.5, 2, 0.5),
                                                               mode="trilinear"), tnn.Tanh()),
                           (2, 2, 3, 4, 6)),
    "upsample_bicubic": (lambda: tnn.Sequential(tnn.Upsample(scale_factor=1.5, mode="bicubic",
                                                             align_corners=True), tnn.Tanh()),
                         (2, 2, 4, 5)),
    "interpolate_antialias": (lambda: _Fn(lambda x: TF.interpolate(
        x, scale_factor=0.4, mode="bilinear", antialias=True).tanh() + TF.interpolate(
        x, size=(3, 4), mode="bicubic", antialias=True).sum()), (2, 2, 8, 9)),
    "zero_pad": (lambda: tnn.Sequential(tnn.ZeroPad2d((1, 1, 2, 0)), tnn.Conv2d(2, 3, 3)),
                 (2, 2, 5, 6)),
    "constant_pad_cropping": (lambda: tnn.Sequential(tnn.ConstantPad2d((-1, 2, 1, -2), 1.5),
                                                     tnn.Tanh()), (2, 2, 5, 6)),
    "constant_pad_leading_dims": (lambda: _Fn(lambda x: TF.pad(
        x, (1, 0, 0, 2, 1, 1, 0, 1), value=-0.5).tanh()), (2, 2, 3, 4)),
    "reflection_pad": (lambda: tnn.Sequential(tnn.ReflectionPad2d((1, 2, 2, 1)), tnn.Tanh()),
                       (2, 2, 5, 6)),
    "replication_pad": (lambda: tnn.Sequential(tnn.ReplicationPad2d(2), tnn.Tanh()),
                        (2, 2, 5, 6)),
    "circular_pad": (lambda: tnn.Sequential(tnn.CircularPad2d((1, 2, 2, 1)), tnn.Tanh()),
                     (2, 2, 5, 6)),
    "pad_1d_3d": (lambda: tnn.Sequential(tnn.ReflectionPad1d((2, 1)), tnn.Unflatten(2, (2, 4)),
                                         tnn.ReplicationPad2d(1), tnn.Unflatten(1, (1, 2)),
                                         tnn.CircularPad3d(1), tnn.Tanh()), (2, 2, 5)),
    "conv1d_circular": (lambda: tnn.Conv1d(3, 6, 2, stride=2, padding=1, dilation=2, groups=3,
                                           bias=False, padding_mode="circular"), (2, 3, 9)),
    "conv2d_replicate_grouped": (lambda: tnn.Conv2d(4, 6, 3, padding=2,
                                                    padding_mode="replicate", groups=2,
                                                    stride=2), (2, 4, 7, 8)),
    "conv2d_same_reflect": (lambda: tnn.Conv2d(4, 6, (2, 3), padding="same",
                                               padding_mode="reflect", dilation=(3, 1)),
                            (2, 4, 7, 8)),
    # stride 1: the input gradient is one GEMM per tap into the (padded) gradient image
    "conv2d_dilated_grouped_padded": (lambda: tnn.Conv2d(4, 6, (3, 2), padding=(2, 1),
                                                         dilation=(2, 3), groups=2),
                                      (2, 4, 7, 8)),
    "conv2d_padding_past_kernel": (lambda: tnn.Conv2d(3, 4, 2, padding=3), (2, 3, 5, 6)),
    "conv1d_dilated": (lambda: tnn.Conv1d(3, 5, 3, padding=4, dilation=2), (3, 3, 9)),
    "conv3d": (lambda: tnn.Sequential(tnn.Conv3d(2, 4, 3, padding=1), tnn.Tanh()),
               (2, 2, 4, 5, 6)),
    "conv3d_relu_grouped": (lambda: tnn.Sequential(tnn.Conv3d(
        4, 4, (1, 2, 3), stride=(1, 2, 1), padding=(0, 1, 2), dilation=(2, 1, 1), groups=2),
        tnn.ReLU(), tnn.Flatten()), (2, 4, 4, 5, 6)),
    "conv3d_relu_pool": (lambda: tnn.Sequential(tnn.Conv3d(2, 3, 3, padding=1, bias=False),
                                                tnn.ReLU(), tnn.MaxPool3d(2)), (2, 2, 4, 5, 6)),
    "conv3d_pool": (lambda: tnn.Sequential(tnn.Conv3d(2, 3, 3, padding=1),
                                           tnn.MaxPool3d(2, padding=1)), (2, 2, 4, 5, 6)),
    "conv3d_reflect": (lambda: tnn.Conv3d(2, 3, 3, padding=1, padding_mode="reflect"),
                       (2, 2, 4, 5, 6)),
    "conv3d_same_circular_unbatched": (lambda: tnn.Conv3d(2, 3, 2, padding="same",
                                                          padding_mode="circular"),
                                       (2, 4, 5, 6)),
}


@pytest.mark.parametrize("name", list(COMPILED))
def test_compiled_matches_eager(name, _cache):
    make, shape = COMPILED[name]
    tn.manual_seed(0)
    check_compiled(make(), shape)


def test_compiled_large_conv2d_float64(_cache):
    tn.manual_seed(0)
    model = tnn.Conv2d(16, 33, (3, 5), stride=(2, 1), padding=(4, 2), dilation=(3, 1)).double()
    check_compiled(model, (4, 16, 50, 100), dtype=tn.float64, tol=1e-8)


def test_compiled_large_stride1_conv2d_parallel(_cache):
    """Large enough for the OpenMP paths of the forward and both gradient kernels."""
    tn.manual_seed(0)
    model = tnn.Conv2d(6, 8, (3, 4), padding=(2, 1), dilation=(1, 2), groups=2)
    check_compiled(model, (4, 6, 20, 24))

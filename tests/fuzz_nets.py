"""Random small nets for fuzzing tracenet.compile against eager mode.

A net is described by a ``Case``: a plain, printable spec (nested tuples naming ``tracenet.nn``
layers and their arguments), the input shape, dtype, train/eval mode and a seed for the
weights and data. ``cases()`` is a hypothesis strategy that only builds valid nets: it tracks
the activation shape while adding layers and picks kernel sizes, paddings and strides that fit.
``check_case`` builds the net twice (eager and compiled, same weights and buffers), runs two
forward/backward steps and compares outputs, input gradients, parameter gradients and buffers
(BatchNorm running statistics).

Run directly (``python tests/fuzz_nets.py N``) it checks N derandomized examples; the sanitizer
test uses that in a subprocess.
"""
import math
import sys
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import tracenet as tn
import tracenet.nn as nn

# --- the spec: ("Layer", args, kwargs) | ("Residual", body) | ("Concat", body) ---------------


class Residual(nn.Module):
    """x + body(x); body keeps the shape."""

    def __init__(self, *body):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return x + self.body(x)


class Concat(nn.Module):
    """cat([x, body(x)], dim=1); body keeps every dimension but the channels."""

    def __init__(self, *body):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return tn.cat([x, self.body(x)], 1)


def build(item):
    kind = item[0]
    if kind in ("Residual", "Concat"):
        return globals()[kind](*(build(i) for i in item[1]))
    _, args, kwargs = item
    return getattr(nn, kind)(*args, **kwargs)


@dataclass(frozen=True)
class Case:
    layers: tuple
    shape: tuple
    dtype: str = "float32"
    train: bool = True
    seed: int = 0


# --- the generator ----------------------------------------------------------------------------

ACTIVATIONS = ["ReLU", "Tanh", "Sigmoid", "GELU", "LeakyReLU", "ELU", "SiLU", "Mish",
               "Hardswish", "Hardsigmoid", "Softplus"]


@st.composite
def activation(draw):
    name = draw(st.sampled_from(ACTIVATIONS))
    kwargs = {}
    if name == "LeakyReLU":
        kwargs["negative_slope"] = draw(st.sampled_from([0.01, 0.2, 1.5]))
    elif name == "ELU":
        kwargs["alpha"] = draw(st.sampled_from([1.0, 0.5, 2.0]))
    elif name == "GELU":
        kwargs["approximate"] = draw(st.sampled_from(["none", "tanh"]))
    elif name == "Softplus":
        kwargs = draw(st.sampled_from([{}, {"beta": 2.0}, {"beta": 0.5, "threshold": 1.0}]))
    return (name, (), kwargs)


def _out_len(length, k, stride, pad, dilation, ceil_mode=False):
    """Output length of a convolution or pooling window (PyTorch's rule for ceil_mode: the last
    window must start inside the input or the left padding)."""
    span = length + 2 * pad - dilation * (k - 1) - 1
    n = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (n - 1) * stride >= length + pad:
        n -= 1
    return n


def _fits(length, k, pad, dilation):
    return dilation * (k - 1) + 1 <= length + 2 * pad


@st.composite
def conv(draw, shape, keep_spatial=False, same_channels=False):
    """A convolution taking ``shape`` (channels, *spatial); keep_spatial: stride 1 and 'same'
    padding (odd kernels) so the output can be added to or concatenated with the input."""
    c, spatial = shape[0], shape[1:]
    d = len(spatial)
    groups = draw(st.sampled_from([g for g in (1, 2, 3, 4) if c % g == 0]))
    out = c if same_channels else groups * draw(st.integers(1, max(1, 8 // groups)))
    windows, new = [], []  # (kernel, stride, padding, dilation) per dimension
    for length in spatial:
        dil = draw(st.sampled_from([1, 1, 2]))
        if keep_spatial:
            k = draw(st.sampled_from([k for k in (1, 3, 5) if dil * (k - 1) // 2 <= length]))
            stride, pad = 1, dil * (k - 1) // 2
        else:
            pad = draw(st.integers(0, 2))
            k = draw(st.integers(1, 5).filter(lambda k: _fits(length, k, pad, dil)))
            stride = draw(st.integers(1, 3))
        windows.append((k, stride, pad, dil))
        new.append(_out_len(length, k, stride, pad, dil))
    ks, strides, pads, dils = zip(*windows)
    kwargs = dict(stride=_compact(strides), padding=_compact(pads), dilation=_compact(dils),
                  groups=groups, bias=draw(st.booleans()))
    return (f"Conv{d}d", (c, out, _compact(ks)), kwargs), (out, *new)


def _compact(values):
    """One number when every dimension has the same value (either spelling is valid)."""
    return values[0] if len(set(values)) == 1 else tuple(values)


@st.composite
def pool(draw, shape):
    c, spatial = shape[0], shape[1:]
    d = len(spatial)
    kind = draw(st.sampled_from(["Max", "Avg"]))
    k = draw(st.integers(1, 3).filter(lambda k: k <= min(spatial)))
    pad = draw(st.integers(0, k // 2))
    stride = draw(st.integers(1, 3))
    dil = draw(st.sampled_from([1, 1, 2])) if kind == "Max" else 1
    if not all(_fits(n, k, pad, dil) for n in spatial):
        dil = 1
    ceil_mode = draw(st.booleans())
    new = tuple(_out_len(n, k, stride, pad, dil, ceil_mode) for n in spatial)
    kwargs = dict(stride=stride, padding=pad, ceil_mode=ceil_mode)
    if kind == "Max":
        kwargs["dilation"] = dil
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
    return (f"{kind}Pool{d}d", (k,), kwargs), (c, *new)


@st.composite
def batchnorm(draw, shape):
    d = max(len(shape) - 1, 1)
    kwargs = dict(momentum=draw(st.sampled_from([0.1, 0.5, None])), affine=draw(st.booleans()))
    return (f"BatchNorm{d}d", (shape[0],), kwargs), shape


@st.composite
def block(draw, shape, depth=0):
    """One layer (or a residual/concat block) on a (channels, *spatial) activation."""
    kinds = ["conv", "conv", "act", "act", "bn", "dropout"]
    if min(shape[1:]) >= 2:
        kinds.append("pool")
    if depth == 0:
        kinds += ["residual", "concat"]
    kind = draw(st.sampled_from(kinds))
    if kind == "conv":
        return draw(conv(shape))
    if kind == "pool":
        return draw(pool(shape))
    if kind == "act":
        return draw(activation()), shape
    if kind == "bn":
        return draw(batchnorm(shape))
    if kind == "dropout":
        return ("Dropout", (), {"p": 0.0}), shape
    first, mid = draw(conv(shape, keep_spatial=True, same_channels=kind == "residual"))
    body = [first]
    for _ in range(draw(st.integers(0, 2))):
        extra = draw(st.sampled_from(["act", "bn"]))
        body.append(draw(activation()) if extra == "act" else draw(batchnorm(mid))[0])
    if kind == "residual":
        return ("Residual", tuple(body)), shape
    return ("Concat", tuple(body)), (shape[0] + mid[0], *shape[1:])


@st.composite
def head(draw, features):
    """Linear layers (with activations and BatchNorm1d between them) on (batch, features)."""
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        out = draw(st.integers(1, 8))
        layers.append(("Linear", (features, out), {"bias": draw(st.booleans())}))
        features = out
        extra = draw(st.sampled_from(["none", "act", "bn", "concat"]))
        if extra == "act":
            layers.append(draw(activation()))
        elif extra == "bn":
            layers.append(draw(batchnorm((features,)))[0])
        elif extra == "concat":
            out = draw(st.integers(1, 4))
            layers.append(("Concat", (("Linear", (features, out), {}), draw(activation()))))
            features += out
    return tuple(layers)


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(["conv1d", "conv2d", "conv2d", "conv3d", "mlp"]))
    batch = draw(st.integers(1, 4))
    wide = draw(st.integers(0, 3)) == 0  # wider than a SIMD register in the innermost dimension
    if kind == "mlp":
        shape = (draw(st.integers(1, 40 if wide else 12)),)
        layers = draw(head(shape[0]))
    else:
        d = int(kind[4])
        inner = {1: 40, 2: 20, 3: 6}[d] if wide else {1: 12, 2: 8, 3: 4}[d]
        outer = st.integers(1, 8 if d == 2 else 4)
        shape = (draw(st.integers(1, 8)), *draw(st.lists(outer, min_size=d - 1, max_size=d - 1)),
                 draw(st.integers(1, inner)))
        layers, cur = [], shape
        for _ in range(draw(st.integers(1, 4 if d < 3 else 2))):
            item, cur = draw(block(cur))
            layers.append(item)
        if draw(st.booleans()):
            layers.append(("Flatten", (), {}))
            layers += draw(head(math.prod(cur)))
        layers = tuple(layers)
    train = draw(st.booleans())
    if train and _has_batchnorm(layers) and batch == 1:
        batch = 2  # training BatchNorm needs more than one value per channel
    return Case(layers=layers, shape=(batch, *shape),
                dtype=draw(st.sampled_from(["float32", "float64"])), train=train,
                seed=draw(st.integers(0, 2**16)))


def _has_batchnorm(layers):
    return any(item[0].startswith("BatchNorm") or
               (item[0] in ("Residual", "Concat") and _has_batchnorm(item[1]))
               for item in layers)


# --- the check --------------------------------------------------------------------------------

TOLERANCE = {"float32": 1e-4, "float64": 1e-9}


def make_net(case):
    """The case's net, with random weights and BatchNorm buffers (so eval mode is not the
    identity); same case, same net."""
    tn.manual_seed(case.seed)
    net = nn.Sequential(*(build(item) for item in case.layers))
    if case.dtype == "float64":
        net = net.double()
    rng = np.random.default_rng([1, case.seed])  # not the inputs' stream
    with tn.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(tn.tensor(rng.standard_normal(m.num_features)))
                m.running_var.copy_(tn.tensor(rng.uniform(0.5, 2.0, m.num_features)))
                if m.affine:
                    m.weight.copy_(tn.tensor(rng.uniform(0.5, 1.5, m.num_features)))
                    m.bias.copy_(tn.tensor(rng.standard_normal(m.num_features)))
    return net.train(case.train)


def _observe(case, net, forward, dtype, steps):
    """What ``steps`` forward/backward steps of ``forward`` (``net`` or its compiled twin) show,
    as (step, what, array) rows: the output, the input and parameter gradients, the buffers.
    Step ``k`` runs a batch ``2 k`` larger than the case's.
    The inputs and cotangents are the case's, in the case's dtype, then converted to ``dtype``.
    """
    rows = []
    for step in range(steps):
        rng = np.random.default_rng([2, case.seed, step])
        # a new batch size on every step: a compiled net serves them all from one build
        shape = (case.shape[0] + 2 * step,) + tuple(case.shape[1:])
        x = tn.tensor(rng.standard_normal(shape).astype(case.dtype).astype(dtype),
                      requires_grad=True)
        y = forward(x)
        gy = rng.standard_normal(tuple(y.shape)).astype(case.dtype).astype(dtype)
        net.zero_grad()
        y.backward(tn.tensor(gy))
        rows.append((step, "output", y.detach().numpy()))
        rows.append((step, "gradient of input", x.grad.numpy()))
        rows += [(step, f"gradient of {name}", p.grad.numpy())
                 for name, p in net.named_parameters()]
        rows += [(step, f"buffer {name}", b.numpy().copy()) for name, b in net.named_buffers()]
    return rows


def _magnitude(array):
    return float(np.max(np.abs(array), initial=0.0))


def check_case(case, steps=2):
    """Compiled against eager over ``steps`` forward/backward steps with fresh inputs (running
    statistics accumulate): outputs, input and parameter gradients, buffers.

    Values agree within ``TOLERANCE`` relative to their magnitude; gradients relative to the
    largest gradient of their step (a gradient that is zero in exact arithmetic, like a bias
    before BatchNorm, is rounding noise of that size). Where float32 results differ by more, the
    compiled one must be about as close to the float64 result as eager's: BatchNorm over two
    values per channel is ill-conditioned enough for both to be off by more than 1e-4."""
    eager = make_net(case)
    twin = make_net(case)
    expected = _observe(case, eager, eager, case.dtype, steps)
    actual = _observe(case, twin, tn.compile(twin), case.dtype, steps)
    tol = TOLERANCE[case.dtype]
    grad_scale = {}
    for step, what, e in expected:
        if what.startswith("gradient"):
            grad_scale[step] = max(grad_scale.get(step, 1.0), _magnitude(e))
    exact = None
    for i, ((step, what, e), (_, _, a)) in enumerate(zip(expected, actual)):
        label = f"step {step}: {what}"
        assert a.shape == e.shape, f"{label}: shape {a.shape} != {e.shape}"
        scale = max(1.0, _magnitude(e), grad_scale[step] if what.startswith("gradient") else 0)
        if np.allclose(a, e, rtol=tol, atol=tol * scale) or case.dtype != "float32":
            np.testing.assert_allclose(a, e, rtol=tol, atol=tol * scale, err_msg=label)
            continue
        if exact is None:
            double = make_net(case).double()
            exact = _observe(case, double, double, "float64", steps)
        x = exact[i][2]
        eager_error, error = _magnitude(e - x), _magnitude(a - x)
        assert error <= 2 * eager_error + tol * scale, (
            f"{label}: compiled is {error:.3g} from the float64 result, eager {eager_error:.3g}"
            f"\ncompiled {a}\neager {e}\nfloat64 {x}")


FUZZ_SETTINGS = dict(deadline=None, database=None, print_blob=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                            HealthCheck.filter_too_much])


def fuzz(max_examples, derandomize=True):
    """Check ``max_examples`` generated cases (reproducibly unless ``derandomize=False``)."""

    @settings(max_examples=max_examples, derandomize=derandomize, **FUZZ_SETTINGS)
    @given(cases())
    def run(case):
        note(repr(case))
        check_case(case)

    run()


if __name__ == "__main__":
    fuzz(int(sys.argv[1]) if len(sys.argv) > 1 else 10)

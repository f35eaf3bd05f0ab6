"""Module, Parameter and the containers, checked against PyTorch's behaviour.

Equivalent module trees are built in both libraries from the same class definitions (made by
``define(L)`` for a library namespace ``L``), then reprs, key lists and error messages are
compared.
"""
import copy
import pickle
import types
import warnings
from collections import OrderedDict

import numpy as np
import pytest

from tracenet import _dtype
from tracenet.tensor import Tensor
from tracenet.nn.parameter import Buffer, Parameter
from tracenet.nn.modules import module as tn_module
from tracenet.nn.modules.module import Module
from tracenet.nn.modules.container import (ModuleDict, ModuleList, ParameterDict,
                                           ParameterList, Sequential)

_NP = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "bool": np.bool_}


def _tn_full(*shape, dtype="float32", fill=1.0):
    return Tensor._wrap(np.full(shape, fill, dtype=_NP[dtype]))


TN = types.SimpleNamespace(
    name="tracenet", Module=Module, Parameter=Parameter, Buffer=Buffer, Sequential=Sequential,
    ModuleList=ModuleList, ModuleDict=ModuleDict, ParameterList=ParameterList,
    ParameterDict=ParameterDict, full=_tn_full, float64=_dtype.float64, int64=_dtype.int64,
    float32=_dtype.float32)


def torch_namespace():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    dtypes = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64,
              "bool": torch.bool}

    def full(*shape, dtype="float32", fill=1.0):
        return torch.full(shape, fill, dtype=dtypes[dtype])

    return types.SimpleNamespace(
        name="torch", Module=nn.Module, Parameter=nn.Parameter, Buffer=nn.Buffer,
        Sequential=nn.Sequential, ModuleList=nn.ModuleList, ModuleDict=nn.ModuleDict,
        ParameterList=nn.ParameterList, ParameterDict=nn.ParameterDict, full=full,
        float64=torch.float64, int64=torch.int64, float32=torch.float32)


@pytest.fixture(scope="module")
def TH():
    return torch_namespace()


def define(L):
    """Small module classes (same names and behaviour) on top of library ``L``."""

    class Leaf(L.Module):
        def __init__(self, i, o, bias=True):
            super().__init__()
            self.i, self.o = i, o
            self.weight = L.Parameter(L.full(o, i))
            if bias:
                self.bias = L.Parameter(L.full(o))
            else:
                self.register_parameter("bias", None)

        def extra_repr(self):
            return f"in_features={self.i}, out_features={self.o}, bias={self.bias is not None}"

        def forward(self, x):
            return x

    class Stats(L.Module):
        def __init__(self, n):
            super().__init__()
            self.register_buffer("running_mean", L.full(n, fill=0.0))
            self.register_buffer("scratch", L.full(n), persistent=False)
            self.register_buffer("count", L.full(dtype="int64", fill=0))
            self.register_buffer("nothing", None)

    class Multi(L.Module):
        def extra_repr(self):
            return "alpha=1,\nbeta=2"

    class MultiParent(L.Module):
        def __init__(self):
            super().__init__()
            self.inner = Multi()
            self.leaf = Leaf(1, 1)

        def extra_repr(self):
            return "first line\nsecond line"

    class OneLineParent(L.Module):
        def __init__(self):
            super().__init__()
            self.leaf = Leaf(2, 2, bias=False)

        def extra_repr(self):
            return "k=1"

    class Empty(L.Module):
        pass

    class Net(L.Module):
        def __init__(self, out=3):
            super().__init__()
            self.scale = L.Parameter(L.full(1))
            self.fc = Leaf(3, out)
            self.bn = Stats(out)
            self.seq = L.Sequential(Leaf(1, 2), Empty(), Leaf(2, 2, bias=False))
            self.blocks = L.ModuleList([Leaf(2, 2) for _ in range(3)] + [Empty(), Empty()])
            self.heads = L.ModuleDict({"b": Leaf(2, 1), "a": Stats(1)})
            self.missing = None

    class Shared(L.Module):
        def __init__(self):
            super().__init__()
            self.a = Leaf(2, 2)
            self.alias = self.a
            self.seq = L.Sequential(self.a, Leaf(2, 2))
            self.tied = self.a.weight

    return types.SimpleNamespace(Leaf=Leaf, Stats=Stats, Multi=Multi, MultiParent=MultiParent,
                                 OneLineParent=OneLineParent, Empty=Empty, Net=Net,
                                 Shared=Shared)


def outcome(fn):
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - the exception is what is compared
        # class paths differ only by the package name
        return ("raise", type(e).__name__, str(e).replace("tracenet.", "torch."))
    return ("ok", result)


def assert_same(fn, TH):
    """``fn(L)`` behaves the same (value, or exception type and message) in both libraries."""
    expected = outcome(lambda: fn(TH))
    got = outcome(lambda: fn(TN))
    if got != expected and got[0] == expected[0] == "ok" and isinstance(got[1], list):
        for i, (a, b) in enumerate(zip(got[1], expected[1])):
            assert a == b, f"item {i} differs"
    assert got == expected


# --- Parameter and Buffer ----------------------------------------------------------------------

def test_parameter_shares_memory_and_is_leaf():
    t = _tn_full(2, 3)
    p = Parameter(t)
    assert isinstance(p, Tensor) and isinstance(p, Parameter)
    assert p.requires_grad and p.is_leaf
    assert p._data is t._data
    t._data[0, 0] = 5.0
    assert p._data[0, 0] == 5.0
    t._vc.value += 1
    assert p._version == t._version
    assert not Parameter(t, requires_grad=False).requires_grad


def test_parameter_defaults_and_errors(TH):
    p = Parameter()
    assert p.dtype is _dtype.float32 and tuple(p.shape) == (0,) and p.requires_grad
    assert_same(lambda L: L.Parameter(L.full(2, dtype="int64")).shape, TH)
    assert_same(lambda L: L.Parameter(L.full(2, dtype="int64"), requires_grad=False).requires_grad,
                TH)
    assert_same(lambda L: L.Parameter(3), TH)


def test_parameter_deepcopy_and_pickle():
    p = Parameter(_tn_full(2), requires_grad=False)
    p._grad = _tn_full(2)
    q = copy.deepcopy(p)
    assert type(q) is Parameter and q is not p and not q.requires_grad
    assert q._data is not p._data and np.array_equal(q._data, p._data)
    assert q._grad is None  # like torch, the gradient is not copied
    r = pickle.loads(pickle.dumps(Parameter(_tn_full(3, fill=2.0))))
    assert type(r) is Parameter and r.requires_grad and np.array_equal(r._data, [2, 2, 2])


def test_buffer_marker(TH):
    t = _tn_full(2)
    b = Buffer(t, persistent=False)
    assert type(b) is Tensor and isinstance(b, Buffer) and not isinstance(t, Buffer)
    assert b._data is t._data and b.persistent is False

    def build(L):
        m = L.Module()
        m.a = L.Buffer(L.full(1))
        m.b = L.Buffer(L.full(2), persistent=False)
        m.b = L.full(3)  # re-assigning keeps the buffer non-persistent
        m.plain = L.full(1)
        return (list(m._buffers), sorted(m._non_persistent_buffers_set),
                list(m.state_dict()), "plain" in m.__dict__)

    assert_same(build, TH)


# --- registration through __setattr__ --------------------------------------------------------

def _attr_cases():
    def assign_tensor_to_param(L):
        m = define(L).Leaf(2, 2)
        m.weight = L.full(2, 2)

    def assign_int_to_param(L):
        m = define(L).Leaf(2, 2)
        m.weight = 3

    def assign_none_to_param(L):
        m = define(L).Leaf(2, 2)
        m.weight = None
        return m.weight, list(m._parameters), [n for n, _ in m.named_parameters()]

    def assign_int_to_buffer(L):
        m = define(L).Stats(2)
        m.running_mean = 3

    def assign_none_to_buffer(L):
        m = define(L).Stats(2)
        m.running_mean = None
        return list(m.state_dict())

    def param_over_buffer(L):
        m = define(L).Stats(2)
        m.running_mean = L.Parameter(L.full(2))
        return list(m._buffers), list(m._parameters)

    def param_over_module(L):
        m = define(L).OneLineParent()
        m.leaf = L.Parameter(L.full(2))
        return list(m._modules), list(m._parameters)

    def int_over_module(L):
        m = define(L).OneLineParent()
        m.leaf = 3

    def none_over_module(L):
        m = define(L).OneLineParent()
        m.leaf = None
        return list(m._modules), repr(m)

    def module_over_plain_attr(L):
        m = L.Module()
        m.x = 3
        m.x = L.Module()
        return "x" in m.__dict__, list(m._modules)

    def before_init(kind):
        def f(L):
            class Early(L.Module):
                def __init__(self):
                    if kind == "module":
                        self.sub = L.Module()
                    elif kind == "param":
                        self.p = L.Parameter(L.full(1))
                    else:
                        self.register_buffer("b", L.full(1))
                    super().__init__()
            Early()
        return f

    def register_errors(L):
        out = []
        m = define(L).Leaf(2, 2)
        m.register_buffer("buf", L.full(1))
        calls = [
            lambda: m.register_parameter("w2", L.full(1)),
            lambda: m.register_parameter(3, L.Parameter(L.full(1))),
            lambda: m.register_parameter("a.b", L.Parameter(L.full(1))),
            lambda: m.register_parameter("", L.Parameter(L.full(1))),
            lambda: m.register_parameter("buf", L.Parameter(L.full(1))),
            lambda: m.register_parameter("training", L.Parameter(L.full(1))),
            lambda: m.register_buffer("weight", L.full(1)),
            lambda: m.register_buffer("c", 3),
            lambda: m.register_buffer(3, L.full(1)),
            lambda: m.register_buffer("a.b", L.full(1)),
            lambda: m.register_buffer("", L.full(1)),
            lambda: m.register_buffer("forward", L.full(1)),
            lambda: m.add_module("a.b", L.Module()),
            lambda: m.add_module("", L.Module()),
            lambda: m.add_module("weight", L.Module()),
            lambda: m.add_module("q", 3),
            lambda: m.add_module(3, L.Module()),
            lambda: m.register_module("training", L.Module()),
            lambda: m.register_buffer("buf", L.full(2)),
        ]
        for call in calls:
            out.append(outcome(call))
        return out

    def missing_attr(L):
        return define(L).Leaf(1, 1).nope

    def delete(L):
        m = define(L).Net()
        del m.scale
        del m.fc
        del m.bn.running_mean
        out = (list(m._parameters), list(m._modules), list(m.bn._buffers), hasattr(m, "fc"))
        try:
            del m.does_not_exist
        except AttributeError as e:
            return out, str(e)
        return out

    def missing_forward(L):
        return define(L).Empty()(1)

    def bad_init_args(L):
        return L.Module(3)

    def bad_init_kwargs(L):
        return L.Module(a=3)

    return [assign_tensor_to_param, assign_int_to_param, assign_none_to_param,
            assign_int_to_buffer, assign_none_to_buffer, param_over_buffer, param_over_module,
            int_over_module, none_over_module, module_over_plain_attr, before_init("module"),
            before_init("param"), before_init("buffer"), register_errors, missing_attr, delete,
            missing_forward, bad_init_args, bad_init_kwargs]


@pytest.mark.parametrize("case", _attr_cases(), ids=lambda f: f.__name__)
def test_attribute_registration_matches_torch(case, TH):
    assert_same(case, TH)


def test_non_leaf_parameter_rejected():
    m = Module()
    p = Parameter(_tn_full(2))
    p.grad_fn = object()
    with pytest.raises(ValueError, match="Cannot assign non-leaf Tensor to parameter 'p'"):
        m.p = p


# --- printing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("builder", [
    lambda L, C: C.Net(),
    lambda L, C: C.Empty(),
    lambda L, C: C.Multi(),
    lambda L, C: C.MultiParent(),
    lambda L, C: C.OneLineParent(),
    lambda L, C: C.Leaf(3, 4),
    lambda L, C: C.Shared(),
    lambda L, C: L.Sequential(),
    lambda L, C: L.ModuleList(),
    lambda L, C: L.ModuleList([C.Leaf(1, 1)]),
    lambda L, C: L.ModuleList([C.Empty(), C.Empty()]),
    lambda L, C: L.ModuleList([C.Leaf(2, 2), C.Leaf(2, 2), C.Leaf(2, 3), C.Leaf(2, 2),
                               C.Leaf(2, 2), L.Sequential(C.Empty(), C.Empty()),
                               L.Sequential(C.Empty(), C.Empty())]),
    lambda L, C: L.ModuleList([L.ModuleList([C.Empty(), C.Empty()]),
                               L.ModuleList([C.Empty(), C.Empty()])]),
    lambda L, C: L.Sequential(OrderedDict([("conv", C.Leaf(1, 6)), ("act", C.Empty())])),
    lambda L, C: L.ModuleDict({"x": C.Multi(), "y": None}),
    lambda L, C: L.ParameterList([L.Parameter(L.full(2, 3)), L.full(2, dtype="float64"), 3,
                                  L.Parameter(L.full(2), requires_grad=False)]),
    lambda L, C: L.ParameterList(),
    lambda L, C: L.ParameterDict({"b": L.full(4, dtype="float64"), "a": L.Parameter(L.full(1)),
                                  "c": "text"}),
    lambda L, C: L.ParameterDict({"only": L.full(2, 2)}),
    lambda L, C: L.ParameterDict(),
])
def test_repr_matches_torch(builder, TH):
    expected = repr(builder(TH, define(TH)))
    assert repr(builder(TN, define(TN))) == expected


def test_repr_none_child_and_registered_module(TH):
    def build(L):
        m = L.Module()
        m.register_module("gone", None)
        m.add_module("e", define(L).Empty())
        return repr(m), [n for n, _ in m.named_modules()], list(m.children())[0]._get_name()
    assert_same(build, TH)


# --- iteration -----------------------------------------------------------------------------------

def test_named_members_match_torch(TH):
    def names(L):
        C = define(L)
        out = {}
        for label, m in (("net", C.Net()), ("shared", C.Shared())):
            out[label] = (
                [n for n, _ in m.named_modules()],
                [n for n, _ in m.named_modules(remove_duplicate=False)],
                [n for n, _ in m.named_modules(prefix="root")],
                [n for n, _ in m.named_parameters()],
                [n for n, _ in m.named_parameters(remove_duplicate=False)],
                [n for n, _ in m.named_parameters(prefix="p", recurse=False)],
                [n for n, _ in m.named_buffers()],
                [n for n, _ in m.named_buffers(remove_duplicate=False)],
                [n for n, _ in m.named_children()],
                len(list(m.parameters())), len(list(m.buffers())), len(list(m.children())),
                len(list(m.modules())), len(list(m.parameters(recurse=False))),
            )
        return out
    assert_same(names, TH)


def test_named_modules_memo(TH):
    def names(L):
        m = define(L).Shared()
        return [n for n, _ in m.named_modules(memo={m.a})]
    assert_same(names, TH)


def test_parameters_are_the_registered_objects():
    C = define(TN)
    m = C.Shared()
    params = list(m.parameters())
    assert params[0] is m.a.weight and m.tied is m.a.weight
    assert len(params) == 4  # a.weight, a.bias, seq.1.weight, seq.1.bias


def test_dir_lists_registered_names(TH):
    def extra(L):
        m = define(L).Net()
        base = set(dir(L.Module()))
        return sorted(set(dir(m)) - base)
    assert_same(extra, TH)
    assert "0" not in dir(Sequential(Module()))


def test_get_submodule_parameter_buffer(TH):
    def lookups(L):
        m = define(L).Net()
        calls = [
            lambda: m.get_submodule("seq.0")._get_name(),
            lambda: m.get_submodule("") is m,
            lambda: m.get_submodule("seq.7"),
            lambda: m.get_submodule("scale"),
            lambda: m.get_submodule("fc.weight"),
            lambda: m.get_submodule("zz.q"),
            lambda: m.get_submodule("fc.training"),
            lambda: tuple(m.get_parameter("fc.weight").shape),
            lambda: m.get_parameter("scale") is m.scale,
            lambda: m.get_parameter("bn.running_mean"),
            lambda: m.get_parameter("fc.zz"),
            lambda: m.get_parameter("fc.training"),
            lambda: m.get_parameter("zz.weight"),
            lambda: m.get_buffer("bn.running_mean") is m.bn.running_mean,
            lambda: m.get_buffer("fc.weight"),
            lambda: m.get_buffer("bn.qq"),
            lambda: m.get_buffer("bn.training"),
        ]
        return [outcome(c) for c in calls]
    assert_same(lookups, TH)


def test_set_submodule():
    C = define(TN)
    m = C.Net()
    new = C.Empty()
    m.set_submodule("seq.1", new)
    assert m.seq[1] is new
    with pytest.raises(AttributeError):
        m.set_submodule("seq.9", new, strict=True)


# --- state_dict ------------------------------------------------------------------------------------

def test_state_dict_keys_and_metadata_match_torch(TH):
    def keys(L):
        C = define(L)
        out = []
        for m in (C.Net(), C.Shared(), C.Stats(2)):
            sd = m.state_dict()
            out.append((type(sd).__name__, list(sd), list(sd._metadata.items())))
        out.append(list(C.Net().state_dict(prefix="model.")))
        out.append(list(C.Net().state_dict(keep_vars=True)))
        return out
    assert_same(keys, TH)


def test_state_dict_values_are_detached_aliases():
    C = define(TN)
    m = C.Net()
    sd = m.state_dict()
    w = sd["fc.weight"]
    assert type(w) is Tensor and not w.requires_grad and w.is_leaf
    assert w._data is m.fc.weight._data
    assert sd["bn.count"]._data is m.bn.count._data
    kv = m.state_dict(keep_vars=True)
    assert kv["fc.weight"] is m.fc.weight and kv["bn.running_mean"] is m.bn.running_mean


def test_state_dict_positional_args_warn(TH):
    for L in (TH, TN):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            dest = L.Module().state_dict({}, "x.")
        assert dest == {}
        assert [(w.category, str(w.message)) for w in rec] == [(
            FutureWarning,
            "Positional args are being deprecated, use kwargs instead. Refer to "
            "https://pytorch.org/docs/main/generated/torch.nn.Module.html"
            "#torch.nn.Module.state_dict for details.")]


def test_load_state_dict_roundtrip_copies_in_place():
    C = define(TN)
    src, dst = C.Net(), C.Net()
    for p in src.parameters():
        p._data[...] = np.arange(p.numel()).reshape(p.shape)
    src.bn.count._data[...] = 7
    w = dst.fc.weight
    version = w._version
    result = dst.load_state_dict(src.state_dict())
    assert repr(result) == "<All keys matched successfully>" == str(result)
    assert result == ([], []) and type(result).__name__ == "_IncompatibleKeys"
    assert dst.fc.weight is w and w._version > version
    assert w._data is not src.fc.weight._data
    for (n1, a), (n2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert n1 == n2 and np.array_equal(a._data, b._data)
    assert int(dst.bn.count._data) == 7
    assert not np.array_equal(dst.bn.scratch._data, src.bn.scratch._data * 0)  # not persistent


def _mutilated(L, kind):
    C = define(L)
    model = C.Net()
    sd = C.Net(out=2).state_dict() if kind == "size" else model.state_dict()
    sd = OrderedDict(sd)
    if kind in ("missing", "both", "all"):
        del sd["fc.weight"]
        del sd["heads.a.count"]
    if kind in ("unexpected", "both", "all"):
        sd["extra"] = L.full(1)
        sd["fc.foo"] = L.full(1)
        sd["seq.9.weight"] = L.full(1)
        sd["heads.zz"] = L.full(1)
    if kind == "all":
        sd["scale"] = L.full(2)
    if kind == "not_tensor":
        sd["fc.bias"] = 3
    return model, sd


@pytest.mark.parametrize("kind", ["missing", "unexpected", "both", "size", "all", "not_tensor"])
@pytest.mark.parametrize("strict", [True, False])
def test_load_state_dict_errors_match_torch(kind, strict, TH):
    def load(L):
        model, sd = _mutilated(L, kind)
        result = model.load_state_dict(sd, strict=strict)
        return repr(result), result.missing_keys, result.unexpected_keys
    assert_same(load, TH)


def test_load_state_dict_type_and_dtype_handling(TH):
    def non_mapping(L):
        return define(L).Leaf(1, 1).load_state_dict([1])

    def cast(L):
        m = define(L).Leaf(2, 2)
        m.load_state_dict({"weight": L.full(2, 2, dtype="float64", fill=0.5),
                           "bias": L.full(2, dtype="int64", fill=3)})
        return str(m.weight.dtype), m.weight.tolist(), str(m.bias.dtype), m.bias.tolist()

    def scalar_from_one_element(L):
        m = define(L).Stats(2)
        m.load_state_dict({"running_mean": L.full(2), "count": L.full(1, dtype="int64", fill=4)})
        return m.count.tolist(), list(m.count.shape)

    assert_same(non_mapping, TH)
    assert_same(cast, TH)
    assert_same(scalar_from_one_element, TH)


def test_load_state_dict_assign(TH):
    def assign(L):
        m = define(L).Leaf(2, 2)
        new_w = L.full(2, 2, dtype="float64", fill=2.0)
        m.load_state_dict({"weight": new_w, "bias": L.full(2)}, assign=True)
        return (type(m.weight).__name__, str(m.weight.dtype), m.weight.requires_grad,
                m.weight.tolist())
    assert_same(assign, TH)
    m = define(TN).Stats(2)
    buf = _tn_full(2, fill=9.0)
    m.load_state_dict({"running_mean": buf, "count": _tn_full(dtype="int64")}, assign=True)
    assert m.running_mean is buf


def test_load_state_dict_accepts_shared_metadata_and_hooks():
    C = define(TN)
    m = C.Net()
    seen = []
    m.fc.register_load_state_dict_post_hook(lambda mod, keys: seen.append(list(keys.missing_keys)))
    m.register_load_state_dict_pre_hook(
        lambda mod, sd, prefix, meta, strict, missing, unexpected, errors: seen.append(
            (prefix, meta.get("version"))))
    m.load_state_dict(m.state_dict())
    assert seen == [("", 1), []]

    def drop_missing(mod, keys):
        keys.missing_keys.clear()
    m.register_load_state_dict_post_hook(drop_missing)
    sd = m.state_dict()
    del sd["scale"]
    assert repr(m.load_state_dict(sd)) == "<All keys matched successfully>"


def test_state_dict_hooks_and_extra_state():
    class WithExtra(Module):
        def __init__(self):
            super().__init__()
            self.w = Parameter(_tn_full(1))
            self.note = "a"

        def get_extra_state(self):
            return {"note": self.note}

        def set_extra_state(self, state):
            self.note = state["note"]

    m = WithExtra()
    sd = m.state_dict()
    assert list(sd) == ["w", "_extra_state"]
    m.note = "b"
    m.load_state_dict(sd)
    assert m.note == "a"
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "_extra_state"'):
        m.load_state_dict({"w": _tn_full(1)})

    calls = []
    m.register_state_dict_pre_hook(lambda mod, prefix, keep_vars: calls.append(("pre", prefix)))
    m.register_state_dict_post_hook(
        lambda mod, sd, prefix, meta: sd.__setitem__(prefix + "added", 1))
    sd = m.state_dict(prefix="x.")
    assert calls == [("pre", "x.")] and sd["x.added"] == 1


# --- forward and hooks -------------------------------------------------------------------------------

def _hook_trace(L):
    log = []

    class Adder(L.Module):
        def forward(self, x, y=1):
            log.append(("forward", x, y))
            return x + y

    m = Adder()
    h1 = m.register_forward_pre_hook(lambda mod, args: log.append(("pre1", args)))
    h2 = m.register_forward_pre_hook(lambda mod, args: args[0] * 10)
    h3 = m.register_forward_pre_hook(
        lambda mod, args, kwargs: log.append(("prekw", args, dict(kwargs))), with_kwargs=True)
    h4 = m.register_forward_pre_hook(
        lambda mod, args, kwargs: ((args[0] + 1,), {"y": 5}), with_kwargs=True)
    m.register_forward_hook(lambda mod, args, out: log.append(("post", args, out)))
    m.register_forward_hook(lambda mod, args, out: out * 2)
    m.register_forward_hook(
        lambda mod, args, kwargs, out: log.append(("postkw", args, dict(kwargs), out)),
        with_kwargs=True)
    m.register_forward_pre_hook(lambda mod, args: log.append("first"), prepend=True)
    m.register_forward_hook(lambda mod, args, out: log.append("post-first"), prepend=True)
    log.append(("result", m(1, y=2)))
    h1.remove()
    h2.remove()
    h1.remove()
    log.append(("result", m(1)))
    with h4:
        pass
    with h3:
        log.append(("result", m(1)))
    log.append(("ids", h2.id - h1.id, h3.id - h1.id))
    return log


def test_forward_hooks_match_torch(TH):
    assert_same(_hook_trace, TH)


def test_forward_pre_hook_return_values(TH):
    def tuple_and_list(L):
        class Ident(L.Module):
            def forward(self, *args):
                return args
        m = Ident()
        m.register_forward_pre_hook(lambda mod, args: [5, 6])
        a = m(1)
        m2 = Ident()
        m2.register_forward_pre_hook(lambda mod, args: (7, 8))
        return a, m2(1)

    def bad_kwargs_result(L):
        class Ident(L.Module):
            def forward(self, x):
                return x
        m = Ident()
        m.register_forward_pre_hook(lambda mod, args, kwargs: 3, with_kwargs=True)
        return m(1)

    assert_same(tuple_and_list, TH)
    assert_same(bad_kwargs_result, TH)


def test_always_call_forward_hook(TH):
    def run(L):
        log = []

        class Bad(L.Module):
            def forward(self, x):
                raise ValueError("boom")
        m = Bad()
        m.register_forward_hook(lambda mod, args, out: log.append(("always", out)),
                                always_call=True)
        m.register_forward_hook(lambda mod, args, out: log.append("normal"))
        return outcome(lambda: m(1)), log
    assert_same(run, TH)


def test_global_forward_hooks():
    log = []
    h = tn_module.register_module_forward_pre_hook(lambda mod, args: log.append(type(mod).__name__))
    h2 = tn_module.register_module_forward_hook(lambda mod, args, out: out + 1)
    try:
        C = define(TN)
        assert C.Leaf(1, 1)(1) == 2
        assert log == ["Leaf"]
    finally:
        h.remove()
        h2.remove()
    assert C.Leaf(1, 1)(1) == 1


def test_backward_hooks_report_unsupported():
    with pytest.raises(NotImplementedError):
        Module().register_full_backward_hook(lambda *a: None)


# --- modes, gradients, conversion ------------------------------------------------------------------

def test_train_eval_propagate(TH):
    def modes(L):
        m = define(L).Net()
        out = [m.training, m.seq[0].training]
        out.append(m.eval() is m)
        out.append([mod.training for mod in m.modules()])
        m.blocks.train()
        out.append([mod.training for mod in m.modules()])
        out.append(m.train(True) is m)
        out.append(all(mod.training for mod in m.modules()))
        out.append(outcome(lambda: m.train(1)))
        out.append(outcome(lambda: m.train("no")))
        return out
    assert_same(modes, TH)


def test_zero_grad():
    C = define(TN)
    m = C.Shared()
    for p in m.parameters():
        p._grad = _tn_full(*p.shape, fill=3.0)
    g = m.a.weight._grad
    version = g._version
    m.zero_grad(set_to_none=False)
    assert m.a.weight._grad is g and not g._data.any() and g._version > version
    assert not g.requires_grad
    m.zero_grad()
    assert all(p._grad is None for p in m.parameters())
    m.zero_grad()  # no grads at all: fine


def test_requires_grad_and_apply(TH):
    def run(L):
        m = define(L).Net()
        assert m.requires_grad_(False) is m
        flags = [p.requires_grad for p in m.parameters()]
        m.requires_grad_()
        flags2 = [p.requires_grad for p in m.parameters()]
        names = []
        assert m.apply(lambda mod: names.append(mod._get_name())) is m
        return flags, flags2, names
    assert_same(run, TH)


def test_to_and_float_double_keep_identity(TH):
    def run(L):
        m = define(L).Net()
        w = m.fc.weight
        out = []
        m.fc.weight.grad = L.full(3, 3)
        out.append(m.to(L.float64) is m)
        out.append((m.fc.weight is w, str(w.dtype), str(w.grad.dtype), str(m.bn.running_mean.dtype),
                    str(m.bn.count.dtype), w.requires_grad))
        m.float()
        out.append((m.fc.weight is w, str(w.dtype), str(m.bn.scratch.dtype)))
        m.double()
        out.append(str(w.dtype))
        m.to("cpu", L.float32)
        out.append(str(w.dtype))
        m.to(device="cpu", dtype=L.float64, non_blocking=True)
        out.append(str(w.dtype))
        m.to(L.full(1))
        out.append(str(w.dtype))
        out.append(m.to("cpu") is m and m.cpu() is m)
        out.append(outcome(lambda: m.to(dtype=L.int64)))
        out.append(m.type(L.float64) is m)
        out.append(str(w.dtype))
        out.append(str(m.bn.count.dtype))
        return out
    assert_same(run, TH)


def test_to_errors():
    m = define(TN).Net()
    with pytest.raises(RuntimeError, match="cpu"):
        m.to("cuda")
    with pytest.raises(RuntimeError):
        m.cuda()
    with pytest.raises(TypeError, match="float32 or float64"):
        m.half()
    with pytest.raises(TypeError, match="invalid combination of arguments"):
        m.to(1.5, 2, 3)
    m.type("torch.DoubleTensor")
    assert m.fc.weight.dtype is _dtype.float64


def test_deepcopy_preserves_structure(TH):
    def run(L):
        m = define(L).Shared()
        h = []
        m.register_forward_hook(lambda mod, args, out: h.append(1))
        c = copy.deepcopy(m)
        return (c.a is c.alias, c.seq[0] is c.a, c.tied is c.a.weight, c.a.weight is m.a.weight,
                type(c.a.weight).__name__, c.a.weight.requires_grad, repr(c) == repr(m),
                len(c._forward_hooks), list(c.state_dict()) == list(m.state_dict()))
    assert_same(run, TH)
    m = define(TN).Net()
    c = copy.deepcopy(m)
    c.fc.weight._data[...] = 0
    assert m.fc.weight._data.all()
    assert not c.bn.running_mean._data.any()


_PICKLE_CLASSES = define(TN)


def test_pickle_module():
    C = _PICKLE_CLASSES
    for cls in (C.Leaf, C.Stats, C.Empty, C.Net):
        cls.__qualname__ = "_PICKLE_CLASSES." + cls.__name__
    globals()["_PICKLE_CLASSES"] = C
    m = C.Net()
    m.fc.weight._data[...] = 4.0
    r = pickle.loads(pickle.dumps(m))
    assert type(r.fc.weight) is Parameter and np.all(r.fc.weight._data == 4.0)
    assert list(r.state_dict()) == list(m.state_dict())
    assert r.bn._non_persistent_buffers_set == {"scratch"}
    assert r.fc.weight._data is not m.fc.weight._data


# --- containers --------------------------------------------------------------------------------------

def _names(seq):
    return [(k, m._get_name()) for k, m in seq._modules.items()]


def test_sequential_matches_torch(TH):
    def run(L):
        C = define(L)
        E, Leaf = C.Empty, C.Leaf
        s = L.Sequential(Leaf(1, 1), E(), Leaf(2, 2))
        out = [len(s), s[-1].i, s[0].i, _names(s[1:]), _names(s[::2]), type(s[1:]).__name__]
        for bad in (3, -4, "a", 1.5):
            out.append(outcome(lambda: s[bad]))

        def set_bad():
            s[5] = E()

        def set_int():
            s[0] = 3

        def del_bad():
            del s[5]
        out += [outcome(set_bad), outcome(set_int), outcome(del_bad), outcome(lambda: s + 3)]
        out.append(_names(s + L.Sequential(E())))
        out.append(s.pop(0).i)
        out.append(_names(s))
        out.append(outcome(lambda: s.insert(10, E())))
        out.append(outcome(lambda: s.insert(0, 3)))
        s.insert(-1, Leaf(5, 5))
        out.append(_names(s))
        out.append(_names(s.extend([E()])))
        out.append(outcome(lambda: s.append(3)))
        out.append(_names(s * 2))
        out.append(_names(2 * s))
        out.append(outcome(lambda: s * 0))
        s += L.Sequential(E())
        out.append(_names(s))
        out.append(outcome(lambda: s.__iadd__(3)))
        del s[1:3]
        out.append(_names(s))
        s[-1] = Leaf(7, 7)
        out.append(_names(s))
        s *= 2
        out.append((_names(s), s[0] is s[len(s) // 2]))
        named = L.Sequential(OrderedDict([("a", E()), ("b", Leaf(1, 1))]))
        out.append(_names(named[1:]))
        del named[0]
        out.append(_names(named))
        out.append(outcome(lambda: L.Sequential(3)))
        out.append(outcome(lambda: L.Sequential().append(E()).extend([E()]).__len__()))
        return out
    assert_same(run, TH)


def test_sequential_forward_chains():
    class AddOne(Module):
        def forward(self, x):
            return x + 1

    class Double(Module):
        def forward(self, x):
            return x * 2

    assert Sequential(AddOne(), Double(), AddOne())(3) == 9
    assert Sequential()(5) == 5
    s = Sequential(AddOne(), Double())
    assert list(s) == list(s._modules.values())


def test_module_list_matches_torch(TH):
    def run(L):
        C = define(L)
        E, Leaf = C.Empty, C.Leaf
        ml = L.ModuleList([Leaf(1, 1), E(), Leaf(3, 3)])
        out = [len(ml), [m._get_name() for m in ml], ml[-1].i, _names(ml[1:]), _names(ml[::2])]
        for bad in (3, -4, "a"):
            out.append(outcome(lambda: ml[bad]))

        def set_bad():
            ml[5] = E()

        def set_int():
            ml[0] = 3
        out += [outcome(set_bad), outcome(set_int)]
        ml[-1] = Leaf(4, 4)
        out.append(_names(ml))
        out.append(outcome(lambda: ml + 3))
        out.append(_names(ml + [E()]))
        out.append(_names(ml + L.ModuleList([E()])))
        ml += [Leaf(6, 6)]
        out.append(_names(ml))
        out.append(ml.pop(0).i)
        out.append(ml.pop(-1).i)
        out.append(_names(ml))
        ml.insert(0, Leaf(8, 8))
        ml.insert(len(ml), E())
        ml.insert(1, E())
        out.append(_names(ml))
        out.append(outcome(lambda: ml.extend(3)))
        out.append(outcome(lambda: ml.extend([3])))
        out.append(outcome(lambda: ml.append(3)))
        out.append(ml.append(E()) is ml and ml.extend([]) is ml)
        out.append(outcome(lambda: ml(3)))
        out.append(outcome(lambda: L.ModuleList(3)))
        out.append(_names(L.ModuleList(x for x in [E()])))
        out.append(outcome(lambda: ml * 2))
        m4 = L.ModuleList([E(), Leaf(1, 1), E(), Leaf(2, 2)])
        del m4[::2]
        out.append(_names(m4))
        del m4[0]
        out.append(_names(m4))
        return out
    assert_same(run, TH)


def test_module_dict_matches_torch(TH):
    def run(L):
        C = define(L)
        E, Leaf = C.Empty, C.Leaf
        md = L.ModuleDict({"b": Leaf(1, 1), "a": E()})
        out = [list(md.keys()), len(md), "a" in md, "zz" in md, list(iter(md))]
        out.append(outcome(lambda: md["c"]))
        out.append(outcome(lambda: md[0]))
        out.append(md.pop("b").i)
        out.append(outcome(lambda: md.pop("zz")))
        out.append(outcome(lambda: md.update(3)))
        out.append(outcome(lambda: md.update([3])))
        out.append(outcome(lambda: md.update([(1, E(), 2)])))
        out.append(outcome(lambda: md.update([(1, E())])))
        md.update({"q": E(), "c": Leaf(2, 2)})
        md.update(OrderedDict([("z", E()), ("y", E())]))
        md.update(L.ModuleDict({"x": E()}))
        md.update([["w", E()]])
        out.append(list(md.keys()))
        out.append([(k, v._get_name()) for k, v in md.items()])
        out.append([v._get_name() for v in md.values()])
        del md["x"]

        def set_int():
            md["v"] = 3
        out.append(outcome(set_int))
        md["v"] = Leaf(9, 9)
        out.append(md.v.i)
        out.append(outcome(lambda: L.ModuleDict({"a.b": E()})))
        out.append(outcome(lambda: md(1)))
        out.append(outcome(lambda: md.get("a")))
        out.append([n for n, _ in md.named_parameters()])
        md.clear()
        out.append(len(md))
        return out
    assert_same(run, TH)


def test_parameter_list_matches_torch(TH):
    def run(L):
        pl = L.ParameterList([L.Parameter(L.full(1)), L.full(2, dtype="float64"), 3])
        out = [len(pl), [type(p).__name__ for p in pl], pl[1].requires_grad, list(pl._parameters),
               outcome(lambda: pl[3]), outcome(lambda: pl[-4]), pl[-1]]
        out.append(pl.append(L.full(3)) is pl)
        out.append(pl.extend([L.Parameter(L.full(4))]) is pl)
        out.append([tuple(p.shape) if hasattr(p, "shape") else p for p in pl])
        out.append([tuple(p.shape) for p in pl[::2] if hasattr(p, "shape")])
        out.append(type(pl[1:]).__name__)
        pl[0] = L.full(5)
        out.append((type(pl[0]).__name__, tuple(pl[0].shape)))
        out.append(outcome(lambda: pl.extend(3)))
        out.append(outcome(lambda: pl.extend(L.full(2))))
        out.append(outcome(lambda: L.ParameterList(3)))
        out.append(outcome(lambda: pl(1)))
        out.append(outcome(lambda: L.ParameterList([L.full(2, dtype="int64")])))
        out.append([n for n, _ in pl.named_parameters()])
        pl += [L.full(1)]
        out.append(len(pl))
        return out
    assert_same(run, TH)


def test_parameter_dict_matches_torch(TH):
    def run(L):
        pd = L.ParameterDict({"b": L.Parameter(L.full(1)), "a": L.full(2)})
        out = [list(pd.keys()), len(pd), "a" in pd, type(pd["a"]).__name__]
        out.append(outcome(lambda: pd["zz"]))
        out.append(outcome(lambda: pd[0]))
        out.append(outcome(lambda: pd.update(3)))
        out.append(outcome(lambda: pd.update([3])))
        out.append(outcome(lambda: pd.update([(1, 2, 3)])))
        pd.update(OrderedDict([("z", L.full(1)), ("y", L.full(1))]))
        pd.update([("x", L.full(1))])
        out.append(list(pd.keys()))
        out.append(pd.popitem()[0])
        out.append(tuple(pd.pop("z").shape))
        out.append(list(reversed(pd)))
        out.append(pd.get("nope", 5))
        out.append(pd.setdefault("new") is None)
        out.append(list(pd.keys()))
        out.append([k for k, _ in pd.items()])
        out.append(len(list(pd.values())))
        out.append(list((pd | {"q": L.full(1)}).keys()))
        pd |= {"r": L.full(1)}
        out.append(list(pd.copy().keys()))
        out.append(list(pd.fromkeys(["k1", "k2"]).keys()))
        out.append(outcome(lambda: pd(1)))
        out.append([n for n, _ in pd.named_parameters()])
        del pd["a"]
        out.append(list(pd.keys()))
        pd.clear()
        out.append(len(pd))
        return out
    assert_same(run, TH)


def test_containers_register_parameters_in_state_dict(TH):
    def run(L):
        class Holder(L.Module):
            def __init__(self):
                super().__init__()
                self.pl = L.ParameterList([L.full(2), 3, L.full(1)])
                self.pd = L.ParameterDict({"w": L.full(2), "s": "text"})
                self.ml = L.ModuleList([define(L).Leaf(1, 1)])
        return list(Holder().state_dict()), repr(Holder())
    assert_same(run, TH)


def test_load_state_dict_from_torch_tensors(TH):
    torch = pytest.importorskip("torch")
    src = define(TH).Net()
    with torch.no_grad():
        for i, p in enumerate(src.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) + i)
    dst = define(TN).Net()
    assert repr(dst.load_state_dict(src.state_dict())) == "<All keys matched successfully>"
    for (k1, a), (k2, b) in zip(dst.state_dict().items(), src.state_dict().items()):
        assert k1 == k2 and a._data.dtype == b.numpy().dtype
        np.testing.assert_array_equal(a._data, b.numpy())

"""Indexing against PyTorch: basic and advanced ``__getitem__``, ``__setitem__`` with scalar and
broadcast tensor values, and gradients flowing through both."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hypothesis import given, settings, strategies as st  # noqa: E402

import tracenet as tn  # noqa: E402


def assert_same(got, expected, exact=True):
    assert tuple(got.shape) == tuple(expected.shape), (got.shape, expected.shape)
    assert repr(got.dtype) == repr(expected.dtype), (got.dtype, expected.dtype)
    g, e = got.detach().numpy(), expected.detach().numpy()
    if exact:
        np.testing.assert_array_equal(g, e)
    else:
        np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


def same_error(fn, exc=(IndexError, RuntimeError), match_message=True):
    with pytest.raises(exc) as ours:
        fn(tn)
    with pytest.raises(exc) as theirs:
        fn(torch)
    assert type(ours.value) is type(theirs.value), (ours.value, theirs.value)
    if match_message:
        assert str(ours.value) == str(theirs.value)


def base(m, shape=(4, 5, 6), dtype="float32"):
    return m.arange(float(np.prod(shape)), dtype=getattr(m, dtype)).reshape(shape)


def convert(key, m):
    """A key spelled with numpy arrays / markers, turned into module ``m``'s objects."""
    if isinstance(key, tuple):
        return tuple(convert(k, m) for k in key)
    if isinstance(key, np.ndarray):
        return m.tensor(key)
    if isinstance(key, list) and key and isinstance(key[0], str):
        return [int(v) for v in key[1:]]  # ["list", ...] stays a Python list
    return key


BASIC_KEYS = [
    0, -1, 3, (1, 2), (1, 2, 3), (-1, -2, -3), slice(None), slice(1, 3), slice(None, None, 2),
    slice(-3, None), slice(1, -1, 2), slice(10, 20), slice(-10, 2), (slice(None), 1),
    (slice(None), slice(None), 0), (Ellipsis, 0), (Ellipsis, slice(1, 3)), (0, Ellipsis, 1),
    (None,), (None, 0), (slice(None), None, 1), (Ellipsis, None), (1, None, slice(None), None),
    Ellipsis, (Ellipsis,), (slice(None, None, 3), slice(1, None, 2), slice(None, 4, 3)),
    (0, 0, slice(None, None, 4)), (slice(2, 2),), (slice(5, 1),), (None, None),
]


@pytest.mark.parametrize("key", BASIC_KEYS, ids=repr)
def test_basic_indexing(key):
    assert_same(base(tn)[key], base(torch)[key])
    assert_same(base(tn, dtype="int64")[key], base(torch, dtype="int64")[key])


def test_basic_indexing_is_a_view():
    x = tn.zeros(3, 4)
    x[1][2] = 5
    assert x[1, 2].item() == 5
    row = x[0]
    row += 1
    assert x[0].tolist() == [1.0] * 4
    col = x[:, ::2]
    col.fill_(7)
    assert x[2].tolist() == [7.0, 0.0, 7.0, 0.0]
    s = x[1:2, None]
    assert tuple(s.shape) == (1, 1, 4)


def test_scalar_indexing_results():
    a, b = base(tn)[1, 2, 3], base(torch)[1, 2, 3]
    assert_same(a, b)
    assert a.item() == b.item()
    assert tuple(tn.tensor(5.0)[None].shape) == tuple(torch.tensor(5.0)[None].shape)
    assert_same(tn.tensor(5.0)[...], torch.tensor(5.0)[...])
    assert_same(tn.tensor([1, 2, 3])[tn.tensor(1)], torch.tensor([1, 2, 3])[torch.tensor(1)])
    assert_same(tn.tensor([1, 2, 3])[np.int64(2)], torch.tensor([1, 2, 3])[np.int64(2)])


@pytest.mark.parametrize("key", [
    5, -6, (0, 6), (0, 0, -7), (0, 0, 0, 0),
], ids=repr)
def test_basic_indexing_errors(key):
    same_error(lambda m: base(m)[key])


def test_slice_step_errors():
    same_error(lambda m: base(m)[::-1], ValueError)
    same_error(lambda m: base(m)[::0], ValueError)


ADVANCED_KEYS = [
    np.array([0, 2]), np.array([[0, 1], [2, 3]]), np.array([-1, 0, -1]), ["list", 0, 2, 2],
    (np.array([0, 1]), np.array([1, 2])), (np.array([0, 1]), slice(None), np.array([1, 2])),
    (slice(None), np.array([1, 3])), (slice(1, 3), np.array([0, 4]), slice(None, 2)),
    (np.array([[0], [1]]), np.array([1, 2, 3])), (Ellipsis, np.array([0, 5])),
    (0, np.array([1, 2])), (np.array([1, 2]), 0), (np.array([1, 2]), 0, np.array([3, 4])),
    (None, np.array([0, 1])), (np.array([0, 1]), None), (np.array([3]), Ellipsis, None),
    np.array([True, False, True, False]), np.array([[True, False] * 2 + [True]] * 4),
    (slice(None), np.array([True, False, True, False, True])),
    np.ones((4, 5, 6), dtype=bool), np.zeros(4, dtype=bool), (np.array([True, False] * 2), 1),
    (np.array([1, 0]), np.array([True, False, True, False, False]), 0), np.array(2),
    np.array([], dtype=np.int64), (np.array([[1], [0]]), np.array([False, True, False, True, True])),
    (slice(None), ["list", 0, 4], ["list", 1, 5]), ["list", 1], (["list", 2, 0], slice(2)),
]


@pytest.mark.parametrize("key", ADVANCED_KEYS, ids=repr)
def test_advanced_indexing(key):
    assert_same(base(tn)[convert(key, tn)], base(torch)[convert(key, torch)])


def test_advanced_indexing_copies():
    x = tn.arange(6.0)
    y = x[tn.tensor([0, 1])]
    y[0] = 100
    assert x[0].item() == 0
    m = x[x > 2]
    m += 1
    assert x.tolist() == list(map(float, range(6)))


def test_bool_scalar_indexing():
    for key in (True, (True, 0), (Ellipsis, True)):
        assert_same(base(tn)[key], base(torch)[key])


def test_index_with_numpy_and_tuple_keys():
    assert_same(base(tn)[np.array([0, 2])], base(torch)[np.array([0, 2])])
    assert_same(base(tn)[[0, 1], [1, 2]], base(torch)[[0, 1], [1, 2]])
    with pytest.warns(UserWarning):
        a = base(tn)[[[0, 1], [1, 2]]]
    with pytest.warns(UserWarning):
        b = base(torch)[[[0, 1], [1, 2]]]
    assert_same(a, b)


def test_advanced_indexing_errors():
    same_error(lambda m: base(m)[m.tensor([4])])
    for key in ((slice(None), [7]), (slice(None), slice(None), [7]), ([0], [7]),
                ([0], slice(None), [-7]), (0, [7]), ([-9],)):
        same_error(lambda m: base(m)[tuple(m.tensor(k) if isinstance(k, list) else k
                                           for k in key)])
        same_error(lambda m: base(m).__setitem__(tuple(m.tensor(k) if isinstance(k, list) else k
                                                       for k in key), 1.0))
    same_error(lambda m: base(m)[m.tensor([0.0])], IndexError)
    same_error(lambda m: base(m)[m.tensor([0, 1]), m.tensor([0, 1, 2])])
    same_error(lambda m: base(m)[m.tensor([True, False])], IndexError)
    same_error(lambda m: base(m)[m.tensor([1, 0]), m.tensor([True] * 5), 0])
    same_error(lambda m: base(m)[:, :, m.ones(5, dtype=m.bool)], IndexError)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_keys_hypothesis(data):
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    items = []
    for size in shape:
        kind = data.draw(st.sampled_from(["int", "slice", "full", "tensor", "none", "skip"]))
        if kind == "int":
            items.append(data.draw(st.integers(-size, size - 1)))
        elif kind == "slice":
            start = data.draw(st.none() | st.integers(-size - 1, size + 1))
            stop = data.draw(st.none() | st.integers(-size - 1, size + 1))
            step = data.draw(st.none() | st.integers(1, 3))
            items.append(slice(start, stop, step))
        elif kind == "full":
            items.append(slice(None))
        elif kind == "tensor":
            items.append(np.array(data.draw(st.lists(st.integers(-size, size - 1), min_size=1,
                                                     max_size=3))))
        elif kind == "none":
            items.append(None)
            items.append(slice(None))
        else:
            break
    if data.draw(st.booleans()) and len(items) < len(shape):
        items.insert(data.draw(st.integers(0, len(items))), Ellipsis)
    key = tuple(items)
    ours = base(tn, shape, "float64")
    theirs = base(torch, shape, "float64")
    try:
        expected = theirs[convert(key, torch)]
    except (IndexError, RuntimeError) as e:
        with pytest.raises(type(e)):
            ours[convert(key, tn)]
        return
    assert_same(ours[convert(key, tn)], expected)
    # the same key assigns the same elements
    value = float(data.draw(st.integers(-9, 9)))
    ours[convert(key, tn)] = value
    theirs[convert(key, torch)] = value
    assert_same(ours, theirs)
    # and routes the gradient to them
    x_t = base(tn, shape, "float64").requires_grad_()
    x_r = base(torch, shape, "float64").requires_grad_()
    out_t, out_r = x_t[convert(key, tn)], x_r[convert(key, torch)]
    w = np.arange(out_r.numel(), dtype=np.float64).reshape(tuple(out_r.shape)) + 1
    (out_t * tn.tensor(w)).sum().backward()
    (out_r * torch.tensor(w)).sum().backward()
    assert_same(x_t.grad, x_r.grad)


# --- __setitem__ ------------------------------------------------------------------------------

SET_KEYS = BASIC_KEYS[:-3] + [k for k in ADVANCED_KEYS if not (isinstance(k, np.ndarray) and
                                                                k.dtype == bool and k.ndim == 3)]


@pytest.mark.parametrize("key", SET_KEYS, ids=repr)
@pytest.mark.parametrize("value", [-1.5, 7, True])
def test_setitem_scalar(key, value):
    ours, theirs = base(tn), base(torch)
    ours[convert(key, tn)] = value
    theirs[convert(key, torch)] = value
    assert_same(ours, theirs)
    ours_i, theirs_i = base(tn, dtype="int64"), base(torch, dtype="int64")
    ours_i[convert(key, tn)] = value
    theirs_i[convert(key, torch)] = value
    assert_same(ours_i, theirs_i)


@pytest.mark.parametrize("key,value_shape", [
    (0, (5, 6)), (0, (6,)), (0, (1, 6)), (0, (5, 1)), (0, ()), ((slice(None), 1), (4, 6)),
    ((slice(None), 1), (6,)), ((slice(None), 1), (4, 1)), (slice(1, 3), (2, 5, 6)),
    (slice(1, 3), (1, 5, 1)), ((Ellipsis, 0), (4, 5)), ((Ellipsis, 0), (5,)),
    (np.array([0, 2]), (2, 5, 6)), (np.array([0, 2]), (6,)), (np.array([0, 2]), (2, 1, 6)),
    ((np.array([0, 1]), np.array([1, 2])), (2, 6)), ((np.array([0, 1]), np.array([1, 2])), (6,)),
    (np.array([True, False, True, False]), (2, 5, 6)), (np.array([True, False, True, False]),
                                                          (6,)),
    ((slice(None), np.array([1, 3])), (4, 2, 6)), ((slice(None), np.array([1, 3])), (2, 1)),
    (np.ones((4, 5, 6), dtype=bool), (120,)), (np.ones((4, 5, 6), dtype=bool), ()),
    ((1, None), (1, 5, 6)), ((slice(None), None, 0), (4, 1, 6)), (0, (1, 1, 6)),
    ((0, slice(None, None, 2)), (3, 6)),
], ids=repr)
def test_setitem_broadcast_tensor(key, value_shape):
    v = np.arange(1.0, 1.0 + np.prod(value_shape)).reshape(value_shape) * -1
    ours, theirs = base(tn), base(torch)
    ours[convert(key, tn)] = tn.tensor(v, dtype=tn.float32)
    theirs[convert(key, torch)] = torch.tensor(v, dtype=torch.float32)
    assert_same(ours, theirs)
    # values of another dtype: cast for basic keys, an error for advanced ones (as in torch)
    ours, theirs = base(tn, dtype="int64"), base(torch, dtype="int64")
    try:
        theirs[convert(key, torch)] = torch.tensor(v * 1.5)
    except RuntimeError as e:
        with pytest.raises(RuntimeError) as err:
            ours[convert(key, tn)] = tn.tensor(v * 1.5)
        assert str(err.value) == str(e)
    else:
        ours[convert(key, tn)] = tn.tensor(v * 1.5)
        assert_same(ours, theirs)


def test_setitem_with_list_and_numpy_values():
    ours, theirs = base(tn), base(torch)
    ours[0, 0] = [1, 2, 3, 4, 5, 6]
    theirs[0, 0] = torch.tensor([1, 2, 3, 4, 5, 6])
    assert_same(ours, theirs)
    ours[1, :, 0] = tn.tensor([9.0, 8, 7, 6, 5])
    theirs[1, :, 0] = torch.tensor([9.0, 8, 7, 6, 5])
    assert_same(ours, theirs)


def test_setitem_errors():
    same_error(lambda m: base(m).__setitem__(0, m.ones(4, 6)))
    same_error(lambda m: base(m).__setitem__(0, m.ones(2, 5, 6)))
    same_error(lambda m: base(m).__setitem__((0, 0), m.ones(1, 2, 6)))
    same_error(lambda m: base(m).__setitem__(m.tensor([0, 1]), m.ones(2, 5, 6,
                                                                      dtype=m.float64)))
    same_error(lambda m: base(m).__setitem__(m.tensor([0, 1]) > 0, m.ones(1, dtype=m.int64)))
    same_error(lambda m: base(m).__setitem__((slice(None), 0), m.ones(3)))
    same_error(lambda m: base(m).__setitem__(m.tensor([0, 1]), m.ones(3, 5, 6)))
    same_error(lambda m: base(m).__setitem__(9, 1.0))


def test_setitem_bumps_version_and_updates_views():
    x = tn.zeros(3, 4)
    v = x[1]
    x[1, 2] = 5.0
    assert v[2].item() == 5.0
    assert x._version == 1 and v._version == 1
    x[x > 1] = 2.0
    assert x._version == 2
    t = torch.zeros(3, 4)
    t[1, 2] = 5.0
    t[t > 1] = 2.0
    assert x._version == t._version


def test_setitem_through_view_changes_base():
    x = tn.zeros(3, 4)
    x.t()[1:, 0] = 1
    r = torch.zeros(3, 4)
    r.t()[1:, 0] = 1
    assert_same(x, r)
    x[:, 1][tn.tensor([0, 2])] = 3
    r[:, 1][torch.tensor([0, 2])] = 3
    assert_same(x, r)


def test_index_select_gather_masked():
    t, r = base(tn, (3, 4)), base(torch, (3, 4))
    i_t, i_r = tn.tensor([2, 0]), torch.tensor([2, 0])
    assert_same(t.index_select(0, i_t), r.index_select(0, i_r))
    assert_same(tn.index_select(t, 1, i_t), torch.index_select(r, 1, i_r))
    g_t, g_r = tn.tensor([[0, 1], [2, 3], [1, 1]]), torch.tensor([[0, 1], [2, 3], [1, 1]])
    assert_same(t.gather(1, g_t), r.gather(1, g_r))
    assert_same(tn.gather(t, 1, g_t), torch.gather(r, 1, g_r))
    assert_same(t.masked_fill(t > 5, -1.0), r.masked_fill(r > 5, -1.0))
    assert_same(t.masked_select(t > 5), r.masked_select(r > 5))
    assert_same(t.nonzero(), r.nonzero())
    assert_same(t.select(1, 2), r.select(1, 2))
    assert_same(t.select(0, -1), r.select(0, -1))


# --- gradients ----------------------------------------------------------------------------------

GRAD_KEYS = [
    0, (1, 2), slice(1, 3), (slice(None), slice(None, None, 2)), (Ellipsis, 1), (None, 0),
    np.array([0, 0, 2]), (np.array([1, 1]), np.array([2, 2])), np.array([True, False, True, True]),
    (slice(None), np.array([4, 0, 4])), np.array([[0, 1], [1, 0]]), (0, np.array([1, 1]), 3),
    ["list", 3, 3, 1],
]


@pytest.mark.parametrize("key", GRAD_KEYS, ids=repr)
def test_getitem_gradient(key):
    x_t = base(tn, dtype="float64").requires_grad_()
    x_r = base(torch, dtype="float64").requires_grad_()
    y_t, y_r = x_t[convert(key, tn)], x_r[convert(key, torch)]
    assert y_t.grad_fn.name() == y_r.grad_fn.name()
    w = np.random.default_rng(0).standard_normal(tuple(y_r.shape))
    (y_t * tn.tensor(w)).sum().backward()
    (y_r * torch.tensor(w)).sum().backward()
    assert_same(x_t.grad, x_r.grad, exact=False)


@pytest.mark.parametrize("key", GRAD_KEYS, ids=repr)
@pytest.mark.parametrize("value_kind", ["scalar", "tensor"])
def test_setitem_gradient(key, value_kind):
    def run(m):
        x = base(m, dtype="float64").requires_grad_()
        y = x * 2  # setitem needs a non-leaf
        target_shape = tuple(y[convert(key, m)].shape)
        v = m.tensor(np.linspace(-1, 1, int(np.prod(target_shape[-1:]) or 1)),
                     dtype=m.float64).requires_grad_()
        if value_kind == "scalar":
            y[convert(key, m)] = 3.0
        else:
            y[convert(key, m)] = v if target_shape[-1:] == tuple(v.shape) else v[0]
        name = type(y.grad_fn).__name__
        w = np.random.default_rng(1).standard_normal(tuple(y.shape))
        (y * m.tensor(w)).sum().backward()
        return x, v, name
    (x_t, v_t, name_t), (x_r, v_r, name_r) = run(tn), run(torch)
    assert name_t == name_r
    assert_same(x_t.grad, x_r.grad, exact=False)
    if v_r.grad is None:
        assert v_t.grad is None
    else:
        assert_same(v_t.grad, v_r.grad, exact=False)


def test_setitem_on_leaf_requiring_grad_errors():
    for key in (0, slice(1, None), Ellipsis, (None, 1), [0, 1], np.array([True, False, True])):
        def run(m):
            x = m.ones(3, requires_grad=True)
            x[convert(key, m)] = 2.0
        same_error(run, RuntimeError)

    def view_of_leaf(m):
        x = m.ones(3, requires_grad=True)
        x[1:][0] = 2.0
    same_error(view_of_leaf, RuntimeError)


def test_setitem_then_read_and_chain_gradients():
    def run(m):
        a = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
        b = m.tensor([4.0, 5.0], requires_grad=True)
        y = a.clone()
        y[1:] = a[1:] * b
        y[0] = (y[2] * 1) ** 2
        y.sum().backward()
        return a.grad, b.grad, y
    (ga_t, gb_t, y_t), (ga_r, gb_r, y_r) = run(tn), run(torch)
    assert_same(y_t, y_r)
    assert_same(ga_t, ga_r)
    assert_same(gb_t, gb_r)


def test_setitem_over_a_saved_view_errors_at_backward():
    def run(m):
        a = m.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = a.clone()
        y[0] = y[2] ** 2  # pow saved y[2], a view of y, which this assignment modifies
        y.sum().backward()
    with pytest.raises(RuntimeError) as ours:
        run(tn)
    with pytest.raises(RuntimeError) as theirs:
        run(torch)
    prefix = "one of the variables needed for gradient computation has been modified by an " \
        "inplace operation"
    assert str(ours.value).startswith(prefix) and str(theirs.value).startswith(prefix)


def test_views_follow_inplace_changes_of_their_base():
    def run(m):
        x = m.arange(1.0, 5.0, requires_grad=True)
        y = x * 1
        first, middle, expanded = y[0], y[1:3], y[:1].expand(3)
        y.mul_(2)              # rewrites y's history: all three views must follow
        middle[0] = 10.0       # through a view: y and its other views follow again
        out = first * 100 + middle.sum() * 10 + expanded.sum() + y.sum()
        out.backward()
        return x.grad, [type(v.grad_fn).__name__ for v in (first, middle, expanded, y)]
    (g_t, names_t), (g_r, names_r) = run(tn), run(torch)
    assert_same(g_t, g_r)
    assert names_t == names_r


def test_inplace_through_view_of_non_grad_base():
    def run(m):
        w = m.ones(2, requires_grad=True)
        y = m.zeros(4)
        v = y[:2]
        y[2:] = w * 3
        assert v.requires_grad and not y.is_leaf
        (y * m.arange(4.0)).sum().backward()
        return w.grad, type(y.grad_fn).__name__
    (g_t, n_t), (g_r, n_r) = run(tn), run(torch)
    assert_same(g_t, g_r)
    assert n_t == n_r


def test_sequence_keys_are_tuples_with_torch_warning():
    for key in ([[0, 1], [1, 2]], [0, slice(None)], [None], [0, None]):
        with pytest.warns(UserWarning) as ours:
            a = base(tn)[key]
        with pytest.warns(UserWarning) as theirs:
            b = base(torch)[key]
        assert_same(a, b)
        assert str(theirs[0].message).startswith(str(ours[0].message))
    assert_same(base(tn)[[1, 0, 1]], base(torch)[[1, 0, 1]])


def test_gradient_through_view_then_setitem_on_base():
    def run(m):
        a = m.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
        y = a * 1
        v = y[1:3]
        v[0] = 10.0  # through the view
        (y * m.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
        return a.grad, y
    (g_t, y_t), (g_r, y_r) = run(tn), run(torch)
    assert_same(y_t, y_r)
    assert_same(g_t, g_r)


def test_index_gradient_accumulates_duplicates():
    x_t = tn.zeros(3, requires_grad=True)
    x_r = torch.zeros(3, requires_grad=True)
    x_t[tn.tensor([0, 0, 2, 0])].sum().backward()
    x_r[torch.tensor([0, 0, 2, 0])].sum().backward()
    assert_same(x_t.grad, x_r.grad)

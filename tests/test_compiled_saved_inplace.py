"""A tensor that an op's backward reads, changed in place after the op: eager mode (like
PyTorch) raises at backward ("one of the variables needed for gradient computation has been
modified by an inplace operation"); compiled code raises the same error where eager mode
does, in a compiled function whose outputs keep their history, in a compiled step function
that calls backward, and in a compiled module, and computes eager's values where eager mode
does not raise (a change to a tensor no op saved, or one the backward does not reach)."""
import numpy as np
import pytest
import torch

import tracenet as tn

TOL = dict(rtol=1e-5, atol=1e-6)


# each case: a function of (a Linear layer, the input x) returning a scalar loss
def _squared_in_place(fc, x):       # mul_ saves the tensor it changes as its other operand
    h = fc(x)
    h.mul_(h)
    return h.sum()


def _saved_off_the_path(fc, x):     # h * h saved h, but the loss does not reach that product
    h = fc(x)
    z = h * h  # noqa: F841
    h.add_(1)
    return h.sum()


def _relu_result_changed(fc, x):    # relu's backward reads its result
    h = fc(x).relu()
    h.mul_(2)
    return h.sum()


def _sigmoid_result_changed_through_a_view(fc, x):
    h = fc(x).sigmoid()
    h[:, 0].zero_()
    return h.sum()


def _exp_result_changed_through_a_reshape(fc, x):
    e = fc(x).exp()
    e.view(-1).add_(1)
    return e.sum()


def _unsaved_add_input_changed(fc, x):  # add saves nothing
    h = fc(x) + 1
    h.mul_(2)
    return h.sum()


def _unsaved_product_operand_changed(fc, x):  # x.sum() needs no gradient: w is not saved
    h = fc(x)
    w = h * 1
    y = x.sum() * w
    w.add_(1)
    return y.sum() + h.sum()


def _denominator_changed(fc, x):    # div saves its denominator
    h = fc(x)
    d = x.sum() / h
    h.add_(1)
    return d.sum()


def _numerator_changed(fc, x):      # ... and its numerator only if the denominator needs grad
    h = fc(x)
    d = h / x.sum()
    h.add_(1)
    return d.sum() + h.sum()


def _row_of_a_saved_result_changed(fc, x):
    h = fc(x).tanh()
    h[0].mul_(2)
    return h.sum()


CASES = {f.__name__.strip("_"): f for f in (
    _squared_in_place, _saved_off_the_path, _relu_result_changed,
    _sigmoid_result_changed_through_a_view, _exp_result_changed_through_a_reshape,
    _unsaved_add_input_changed, _unsaved_product_operand_changed, _denominator_changed,
    _numerator_changed, _row_of_a_saved_result_changed)}
RAISING = {"squared_in_place", "relu_result_changed", "sigmoid_result_changed_through_a_view",
           "exp_result_changed_through_a_reshape", "denominator_changed",
           "row_of_a_saved_result_changed"}


def _layer(lib):
    fc = lib.nn.Linear(4, 3)
    w = np.arange(12, dtype=np.float32).reshape(3, 4) / 10 - 0.5
    with lib.no_grad():
        fc.weight.copy_(lib.tensor(w))
        fc.bias.copy_(lib.tensor([0.1, -0.2, 0.3]))
    return fc


def _inputs(batch):
    return np.linspace(-1, 2, batch * 4, dtype=np.float32).reshape(batch, 4)


def _outcome(lib, case, batch, mode):
    """("ok", loss, weight gradient) or ("RuntimeError", message) of one run."""
    fc = _layer(lib)
    x = lib.tensor(_inputs(batch))

    def step(x):
        opt.zero_grad()
        loss = case(fc, x)
        loss.backward()
        return loss

    opt = lib.optim.SGD(fc.parameters(), lr=0.1)
    try:
        if mode == "step function":
            loss = (tn.compile(step) if lib is tn else step)(x)
        else:
            f = (lambda x: case(fc, x))
            loss = (tn.compile(f) if mode == "function" and lib is tn else f)(x)
            loss.backward()
    except RuntimeError as e:
        return ("RuntimeError", str(e))
    return ("ok", loss.item(), fc.weight.grad.numpy().copy())


def _same_outcome(got, want):
    assert got[0] == want[0], (got, want)
    if got[0] == "RuntimeError":
        assert got[1] == want[1]
    else:
        np.testing.assert_allclose(got[1], want[1], **TOL)
        np.testing.assert_allclose(got[2], want[2], **TOL)


@pytest.mark.parametrize("name", list(CASES))
def test_eager_mode_raises_where_torch_does(name):
    want = _outcome(torch, CASES[name], 2, "eager")
    assert (want[0] == "RuntimeError") == (name in RAISING)
    _same_outcome(_outcome(tn, CASES[name], 2, "eager"), want)


@pytest.mark.parametrize("mode", ["function", "step function"])
@pytest.mark.parametrize("name", list(CASES))
def test_compiled_code_raises_where_eager_mode_does(name, mode):
    _same_outcome(_outcome(tn, CASES[name], 2, mode), _outcome(tn, CASES[name], 2, "eager"))


class _Squaring(tn.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = _layer(tn)

    def forward(self, x):
        h = self.fc(x).relu()
        h.mul_(h)
        return h


def test_compiled_module_output_backward_raises_with_the_calls_shape():
    """A compiled module traced at one batch size (its batch symbolic) raises at backward for
    another with that call's shape in the message, as eager mode does; its forward and its
    inference run."""
    net = _Squaring()
    compiled = tn.compile(net)
    for batch in (2, 5):
        x = tn.tensor(_inputs(batch))
        eager_error = compiled_error = None
        try:
            net(x).sum().backward()
        except RuntimeError as e:
            eager_error = str(e)
        out = compiled(x)
        np.testing.assert_allclose(out.detach().numpy(), net(x).detach().numpy(), **TOL)
        try:
            out.sum().backward()
        except RuntimeError as e:
            compiled_error = str(e)
        assert eager_error is not None and f"[{batch}, 3]" in eager_error
        assert compiled_error == eager_error
    with tn.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), net(x).numpy(), **TOL)


def test_an_output_whose_backward_reads_nothing_changed_still_differentiates():
    """Of two outputs, only the one whose backward reads the changed tensor raises."""
    fc = _layer(tn)

    def f(x):
        h = fc(x)
        e = h.exp()
        kept = h * 2
        e.add_(1)
        return e, kept

    compiled = tn.compile(f)
    x = tn.tensor(_inputs(3))
    e, kept = compiled(x)
    kept.sum().backward()
    fc2 = _layer(tn)
    (fc2(x) * 2).sum().backward()
    np.testing.assert_allclose(fc.weight.grad.numpy(), fc2.weight.grad.numpy(), **TOL)
    e, kept = compiled(x)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        e.sum().backward()


def test_a_buffer_read_by_backward_and_changed_in_place_raises():
    """A buffer (a tensor that keeps its real version while traced) changed in place after a
    product saved it."""
    class Scaled(tn.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = _layer(tn)
            self.register_buffer("scale", tn.tensor([1.0, 2.0, 3.0]))

        def forward(self, x):
            y = self.fc(x) * self.scale
            self.scale.add_(1)
            return y

    x = tn.tensor(_inputs(2))
    errors = []
    for net in (Scaled(), tn.compile(Scaled())):
        try:
            net(x).sum().backward()
        except RuntimeError as e:
            errors.append(str(e))
    assert len(errors) == 2 and errors[0] == errors[1]
    assert "[torch.FloatTensor [3]] is at version 1; expected version 0" in errors[0]

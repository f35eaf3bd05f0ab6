"""Per-parameter update rules on numpy arrays.

Each ``*_update`` function applies one optimizer step to a single parameter: ``param`` and the
state buffers are updated in place, ``grad`` is only read. Arithmetic happens in the
parameter's own precision, one elementwise operation at a time, in the order given by the
algorithm descriptions in PyTorch's documentation for the single-tensor (``foreach=False``)
implementation, so float32 results agree with PyTorch's CPU results.

Rounding conventions (measured against PyTorch's CPU kernels):

* a scalar hyperparameter is first rounded to the tensor's dtype;
* ``a + alpha * b`` (``add`` with ``alpha``) is a fused multiply-add: one rounding;
* ``a + value * b * c`` (``addcmul``) rounds ``value * b`` and then fuses ``* c + a``;
* ``a + value * b / c`` (``addcdiv``) rounds ``value * b``, the quotient and the sum;
* ``lerp(a, b, w)`` is ``fma(w, b - a, a)`` for ``|w| < 0.5`` and
  ``fma(w - 1, b - a, b)`` otherwise.

Square roots are correctly rounded here (``np.sqrt``). PyTorch's CPU ``sqrt`` goes through
MKL and is off by one ulp for roughly one element in six, so Adam, RMSprop and Adagrad agree
with PyTorch to within that, and bit for bit once ``_sqrt`` uses the same square root.

A C translation of these rules reproduces them with ``fmaf`` wherever a step is fused above.
"""
import functools

import numpy as np

__all__ = ["sgd_update", "adam_update", "rmsprop_update", "adagrad_update"]


def _scalar(value, like):
    """A Python number rounded to the dtype of array ``like``."""
    return like.dtype.type(value)


def fma(a, b, c, out):
    """``out = a * b + c`` rounded once. For float32 the product is exact in float64 and the
    float64 sum is rounded to float32, which equals a true fma except in (astronomically rare)
    double-rounding ties."""
    dtype = out.dtype
    if dtype == np.float32:
        tmp = np.add(np.multiply(a, b, dtype=np.float64), c, dtype=np.float64)
        np.copyto(out, tmp, casting="same_kind")
    else:
        tmp = np.multiply(a, b, dtype=dtype)
        np.add(tmp, c, out=out)
    return out


def add_(a, b, alpha, out=None):
    """``a + alpha * b`` (torch ``add`` with ``alpha``) into ``out`` (default: ``a`` in place)."""
    if out is None:
        out = a
    alpha = _scalar(alpha, a)
    if alpha == 1:
        return np.add(a, b, out=out)
    return fma(b, alpha, a, out)


def mul_(a, value):
    return np.multiply(a, _scalar(value, a), out=a)


def addcmul_(a, b, c, value, out=None):
    """``a + value * b * c`` into ``out`` (default: ``a``)."""
    if out is None:
        out = a
    value = _scalar(value, a)
    vb = b if value == 1 else np.multiply(b, value)
    return fma(vb, c, a, out)


def addcdiv_(a, b, c, value, out=None):
    """``a + value * b / c`` into ``out`` (default: ``a``)."""
    if out is None:
        out = a
    value = _scalar(value, a)
    q = np.multiply(b, value) if value != 1 else b.copy()
    np.divide(q, c, out=q)
    return np.add(a, q, out=out)


def lerp_(a, b, weight):
    """``a += weight * (b - a)`` in place."""
    w = _scalar(weight, a)
    diff = np.subtract(b, a)
    if abs(w) < 0.5:
        return fma(diff, w, a, a)
    return fma(diff, w - a.dtype.type(1), b, a)


def _sqrt(a, out=None):
    return np.sqrt(a, out=out)


def _negate(grad, maximize):
    return np.negative(grad) if maximize else grad


def _zero_dim_as_1d(update):
    """numpy ufuncs return scalars for 0-dim inputs; run the update on 1-element views."""
    @functools.wraps(update)
    def wrapper(param, *args, **kwargs):
        if param.ndim != 0:
            return update(param, *args, **kwargs)
        view = (lambda x: x.reshape(1) if isinstance(x, np.ndarray) and x.ndim == 0 else x)
        out = update(view(param), *(view(a) for a in args),
                     **{k: view(v) for k, v in kwargs.items()})
        return out.reshape(()) if isinstance(out, np.ndarray) else out
    return wrapper


# --- SGD ---------------------------------------------------------------------------------
@_zero_dim_as_1d
def sgd_update(param, grad, momentum_buffer, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
               nesterov=False, maximize=False):
    """One SGD step. Returns the momentum buffer: the given one updated in place, or a new
    array on the first step (``None`` when ``momentum == 0``)."""
    g = _negate(grad, maximize)
    if weight_decay != 0:
        g = add_(g, param, weight_decay, out=np.empty_like(param))
    if momentum != 0:
        if momentum_buffer is None:
            momentum_buffer = np.array(g, dtype=param.dtype, copy=True)
        else:
            mul_(momentum_buffer, momentum)
            add_(momentum_buffer, g, 1 - dampening)
        if nesterov:
            g = add_(g, momentum_buffer, momentum, out=np.empty_like(param))
        else:
            g = momentum_buffer
    add_(param, g, -lr)
    return momentum_buffer


# --- Adam / AdamW ------------------------------------------------------------------------
@_zero_dim_as_1d
def adam_update(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1=0.9,
                beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                decoupled_weight_decay=False):
    """One Adam step; ``step`` is the step count after incrementing (1 on the first step).
    ``max_exp_avg_sq`` is only used (and may be None otherwise) when ``amsgrad``."""
    g = _negate(grad, maximize)
    if weight_decay != 0:
        if decoupled_weight_decay:
            mul_(param, 1 - lr * weight_decay)
        else:
            g = add_(g, param, weight_decay, out=np.empty_like(param))
    lerp_(exp_avg, g, 1 - beta1)
    mul_(exp_avg_sq, beta2)
    addcmul_(exp_avg_sq, g, g, 1 - beta2)

    step = float(step)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5

    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = _sqrt(max_exp_avg_sq)
    else:
        denom = _sqrt(exp_avg_sq)
    np.divide(denom, _scalar(bias_correction2_sqrt, denom), out=denom)
    np.add(denom, _scalar(eps, denom), out=denom)
    addcdiv_(param, exp_avg, denom, -step_size)


# --- RMSprop -----------------------------------------------------------------------------
@_zero_dim_as_1d
def rmsprop_update(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha=0.99, eps=1e-8,
                   weight_decay=0.0, momentum=0.0, centered=False, maximize=False):
    """One RMSprop step. ``grad_avg`` is used when ``centered``, ``momentum_buffer`` when
    ``momentum > 0``; both are updated in place."""
    g = _negate(grad, maximize)
    if weight_decay != 0:
        g = add_(g, param, weight_decay, out=np.empty_like(param))
    mul_(square_avg, alpha)
    addcmul_(square_avg, g, g, 1 - alpha)
    if centered:
        lerp_(grad_avg, g, 1 - alpha)
        avg = addcmul_(square_avg, grad_avg, grad_avg, -1, out=np.empty_like(param))
        avg = _sqrt(avg, out=avg)
    else:
        avg = _sqrt(square_avg)
    np.add(avg, _scalar(eps, avg), out=avg)
    if momentum > 0:
        mul_(momentum_buffer, momentum)
        addcdiv_(momentum_buffer, g, avg, 1)
        add_(param, momentum_buffer, -lr)
    else:
        addcdiv_(param, g, avg, -lr)


# --- Adagrad -----------------------------------------------------------------------------
@_zero_dim_as_1d
def adagrad_update(param, grad, state_sum, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
                   maximize=False):
    """One Adagrad step; ``step`` is the step count after incrementing."""
    g = _negate(grad, maximize)
    if weight_decay != 0:
        g = add_(g, param, weight_decay, out=np.empty_like(param))
    clr = lr / (1 + (float(step) - 1) * lr_decay)
    addcmul_(state_sum, g, g, 1)
    std = _sqrt(state_sum)
    np.add(std, _scalar(eps, std), out=std)
    addcdiv_(param, g, std, -clr)

"""tracenet: PyTorch's surface on numpy, with a compiler inside (``tracenet.compile``).

``import tracenet as torch`` is meant to work for ordinary PyTorch tutorial code.
"""
from ._dtype import (bool_ as bool, double, dtype, float, float32, float64, get_default_dtype,
                     int64, long, set_default_dtype)
from ._dtype import int64 as int  # noqa: A001  (torch.int is int32; tracenet has one int type)
from ._dtype import promote_types, result_type as _result_type
from .size import Size
from .tensor import Tensor, device
# autograd installs the eager interpreter (registry._eager) and Tensor.backward: first, so
# every op module loads with the engine in place
from . import autograd
from . import _tensor_methods  # noqa: F401  (binds the op methods onto Tensor)
from ._tensor_str import get_printoptions, set_printoptions
from .autograd.grad_mode import (enable_grad, inference_mode, is_grad_enabled, no_grad,
                                 set_grad_enabled)
from .ops.creation import (arange, as_tensor, bernoulli, empty, empty_like, eye, from_numpy, full,
                           full_like, initial_seed, linspace, manual_seed, normal, ones,
                           ones_like, rand, rand_like, randint, randint_like, randn, randn_like,
                           randperm, seed, tensor, zeros, zeros_like)
from .ops.creation import range_ as range  # noqa: A001
from .ops.elementwise import (abs, absolute, add, addcdiv, addcmul, ceil, clamp, clamp_max,
                              clamp_min, clip, clone, cos, div, divide, eq, exp, expm1, floor, ge,
                              greater, greater_equal, gt, isfinite, isinf, isnan, le, lerp, less,
                              less_equal, log, log1p, log2, logical_and, logical_not, logical_or,
                              logical_xor, lt, maximum, minimum, mul, multiply, ne, neg, negative,
                              not_equal, pow, reciprocal, relu, round, rsqrt, rsub, sigmoid, sign,
                              sin, sqrt, square, sub, subtract, tanh, true_divide, trunc, where)
from .ops.elementwise import floor_divide, remainder
from .ops.reduce import (all, amax, amin, any, argmax, argmin, count_nonzero, logsumexp, max,
                         mean, min, std, sum, var)
from .ops.shape import (broadcast_to, cat, concat, concatenate, flatten, flip, hstack, permute,
                        reshape, squeeze, stack, swapaxes, swapdims, t, transpose, unflatten,
                        unsqueeze, vstack)
from .ops.shape import detach as _detach
from .ops.index import (chunk, gather, index_select, masked_fill, masked_select, narrow,
                        nonzero, scatter_add, select, split, unbind)
from .ops.sorting import (argsort, bincount, cumprod, cumsum, diag, repeat_interleave, roll,
                          sort, topk, tril, triu, unique)
from .ops.creation import multinomial
from .ops.generator import Generator, default_generator
from .ops.linalg import addmm, bmm, dot, ger, matmul, mm, mv, outer
from .ops.batch_products import addbmm, baddbmm
from .ops.contraction import einsum, meshgrid, tensordot
from .ops.norms import cdist, norm
from .ops.scatter import histc, scatter
from . import linalg  # noqa: E402  (torch.linalg: norm, vector_norm, matrix_norm)
from .ops.nn import log_softmax as _log_softmax, softmax as _softmax
from .ops.common import broadcast_shapes as _broadcast_shapes
from . import autograd, nn, optim  # noqa: E402
from .nn.functional import conv1d, conv2d, conv3d, dropout  # noqa: E402
from .compiler import compile  # noqa: E402,A001
from .step import compile_step  # noqa: E402
from . import fused_optim  # noqa: E402,F401  (optimizer.step() as one C call)
from .trace import trace  # noqa: E402
from .serialization import load, save  # noqa: E402
from . import backends, cuda  # noqa: E402
from .utils import data as _data  # noqa: E402,F401  (tracenet.utils.data, as torch.utils.data)
from ._legacy_types import (BoolTensor, ByteTensor, DoubleTensor, FloatTensor,  # noqa: E402
                            IntTensor, LongTensor)

strided = "torch.strided"
contiguous_format = preserve_format = channels_last = None


def is_tensor(obj):
    return isinstance(obj, Tensor)


def numel(t):
    return t.numel()


def is_floating_point(t):
    return t.is_floating_point()


def softmax(x, dim, dtype=None):
    return _softmax(x, dim)


def log_softmax(x, dim, dtype=None):
    return _log_softmax(x, dim)


def broadcast_shapes(*shapes):
    import numbers as _numbers
    return Size(_broadcast_shapes(*((s,) if isinstance(s, _numbers.Integral) else tuple(s)
                                    for s in shapes)))


def detach(x):
    return x.detach()


def allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    import numpy as _np
    # numpy's allclose/array_equal already return Python bools
    return _np.allclose(a._concrete("allclose"), b._concrete("allclose"), rtol, atol, equal_nan)


def equal(a, b):
    import numpy as _np
    return tuple(a.shape) == tuple(b.shape) and _np.array_equal(a._concrete("equal"),
                                                                b._concrete("equal"))


def isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    import numpy as _np
    return Tensor._wrap(_np.isclose(a._concrete("isclose"), b._concrete("isclose"), rtol, atol,
                                    equal_nan))


from .runtime.threads import get_num_threads, set_num_threads  # noqa: E402
from .runtime.threads import set_blas_threads as _set_blas_threads  # noqa: E402

_set_blas_threads(1)  # eager BLAS calls on the calling thread (see runtime/threads.py)


__version__ = "0.1.0"

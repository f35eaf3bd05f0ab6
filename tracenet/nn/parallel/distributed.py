"""``DistributedDataParallel``: synchronous data-parallel training over tracenet.distributed.

Every rank holds a replica of the module (rank 0's parameters and buffers are broadcast at
construction) and runs forward and backward on its own part of the batch. During
``backward()`` the gradients are averaged across ranks in buckets (parameters in reverse
order, about the order backward produces their gradients; torch's caps: 1 MiB for the first
bucket, ``bucket_cap_mb`` for the others): a bucket's allreduce starts, non-blocking, as soon
as its last gradient arrives, so it proceeds while backward computes the rest; the last
gradient of the backward waits for all of them. After ``backward()`` every rank holds the same
averaged ``.grad``, so identical optimizer steps keep the replicas identical.

The gradients arrive through ``Tensor.register_hook`` on each parameter (the hook runs with a
leaf's new gradient, before it is added to ``.grad``). Because a hook cannot see its own
accumulation, the last parameter of a bucket folds its ``.grad`` into the bucket and hands the
engine zeros; the reduced value is written into its ``.grad`` when the bucket is waited for.
"""
import contextlib
import weakref

import numpy as np

from ... import _grad_mode
from ...distributed import collectives
from ...distributed.group import communicator
from ...ops import registry
from ...tensor import Tensor
from ..modules.module import Module

FIRST_BUCKET_BYTES = 1 << 20  # torch's first_bucket_bytes_cap: the first reduction starts early

# a compiled training step (tracenet.compile_step) traces the forward with a list pushed here:
# it reduces the gradients itself between the compiled backward and the update. Any other
# trace of the forward would compile a backward that skips the reduction.
step_tracers = []

_NOT_TRACEABLE = (
    "DistributedDataParallel cannot run inside a compiled program: the gradient allreduce runs "
    "between backward and the optimizer update. Compile the module it wraps "
    "(DistributedDataParallel(tracenet.compile(net))), or compile the training step with "
    "tracenet.compile_step(loss_fn, optimizer)")


class _Bucket:
    """Parameters reduced together through one flat buffer."""
    __slots__ = ("members", "buffer", "pending", "work", "folded")

    def __init__(self, params, indices):
        self.members = []  # (parameter index, offset, size)
        offset = 0
        for i in indices:
            n = params[i]._data.size
            self.members.append((i, offset, n))
            offset += n
        self.buffer = np.empty(offset, params[indices[0]]._data.dtype)
        self.pending, self.work, self.folded = len(indices), None, None


def _bucket_indices(params, cap_bytes):
    """Parameter indices grouped into buckets: reverse order, one dtype per bucket."""
    done, open_ = [], {}
    for i in reversed(range(len(params))):
        p = params[i]
        members, size = open_.get(p.dtype, ([], 0))
        members.append(i)
        size += p._data.nbytes
        if size >= (min(FIRST_BUCKET_BYTES, cap_bytes) if not done else cap_bytes):
            done.append(members)
            open_.pop(p.dtype, None)
        else:
            open_[p.dtype] = (members, size)
    return done + [m for m, _ in open_.values()]


class DistributedDataParallel(Module):
    """Wrap ``module`` (a Module or a ``tracenet.compile``d one) for data-parallel training;
    ``init_process_group`` must have been called."""

    def __init__(self, module, device_ids=None, output_device=None, dim=0,
                 broadcast_buffers=True, process_group=None, bucket_cap_mb=None,
                 find_unused_parameters=False, check_reduction=False,
                 gradient_as_bucket_view=False, static_graph=False):
        super().__init__()
        comm = communicator(process_group)
        inner = module if isinstance(module, Module) else getattr(module, "_module", None)
        if not isinstance(inner, Module):
            raise TypeError(f"DistributedDataParallel wraps a Module or a compiled module, got "
                            f"{type(module).__name__}")
        if find_unused_parameters:
            raise NotImplementedError("DistributedDataParallel(find_unused_parameters=True) is "
                                      "not supported: every parameter must get a gradient in "
                                      "every backward")
        self._modules["module"] = inner  # state_dict keys start with "module.", as torch's
        object.__setattr__(self, "_target", module)  # what forward calls (maybe compiled)
        self.broadcast_buffers = broadcast_buffers
        self.dim = dim
        self.require_backward_grad_sync = True
        self._comm = comm
        self._world = comm.Get_size()
        named = [(n, p) for n, p in inner.named_parameters() if p.requires_grad]
        if not named:
            raise RuntimeError("DistributedDataParallel is not needed when a module doesn't "
                               "have any parameter that requires a gradient.")
        self._param_names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._buffers_to_sync = [b for _, b in inner.named_buffers()]
        self._verify_same_layout(inner)
        with _grad_mode.no_grad():
            for t in [p for _, p in inner.named_parameters()] + self._buffers_to_sync:
                collectives.broadcast(t, 0, process_group, check=False)
        cap = int((25 if bucket_cap_mb is None else bucket_cap_mb) * (1 << 20))
        self._buckets = [_Bucket(self._params, ix) for ix in _bucket_indices(self._params, cap)]
        self._bucket_of = {}
        for b, bucket in enumerate(self._buckets):
            for i, _, _ in bucket.members:
                self._bucket_of[i] = b
        self._expect_grads = False
        self._ready = [False] * len(self._params)
        self._n_ready = self._n_buckets_done = 0
        me = weakref.ref(self)
        self._hook_handles = [p.register_hook(_ready_hook(me, i))
                              for i, p in enumerate(self._params)]

    @property
    def module(self):
        """The module given to the constructor."""
        return self._target

    def _verify_same_layout(self, inner):
        layout = ([(n, tuple(p.shape), str(p.dtype)) for n, p in inner.named_parameters()],
                  [(n, tuple(b.shape), str(b.dtype)) for n, b in inner.named_buffers()])
        everyone = self._comm.allgather(layout)
        for r, other in enumerate(everyone):
            if other != layout:
                diff = next((a, b) for a, b in zip(layout[0] + layout[1], other[0] + other[1])
                            if a != b) if len(other[0]) == len(layout[0]) else \
                    (f"{len(layout[0])} parameters", f"{len(other[0])} parameters")
                raise RuntimeError(f"DistributedDataParallel: the replicas differ: this rank "
                                   f"has {diff[0]}, rank {r} has {diff[1]}")

    # --- forward ------------------------------------------------------------------------------
    def forward(self, *inputs, **kwargs):
        if registry._tracer[0] is not None:
            if not step_tracers:
                raise RuntimeError(_NOT_TRACEABLE)
            step_tracers[-1].append(self)
            # the step compiles the whole forward: trace the plain module even when a
            # compiled one was given (the same parameters)
            return self._modules["module"](*inputs, **kwargs)
        self._prepare_for_backward()
        return self._target(*inputs, **kwargs)

    def _prepare_for_backward(self):
        if self._n_ready:
            missing = [n for n, r in zip(self._param_names, self._ready) if not r]
            raise RuntimeError(
                "Expected to have finished reduction in the prior iteration before starting a "
                "new one: these parameters got no gradient in the last backward: "
                f"{', '.join(missing)}. DistributedDataParallel needs a gradient for every "
                "parameter in every backward (find_unused_parameters is not supported)")
        if self.broadcast_buffers:
            self.sync_buffers()
        self._expect_grads = self.require_backward_grad_sync and _grad_mode.is_grad_enabled()

    def sync_buffers(self):
        """Broadcast rank 0's buffers (running statistics) to every rank."""
        if self._world > 1:
            with _grad_mode.no_grad():
                for b in self._buffers_to_sync:
                    collectives.broadcast(b, 0, check=False)

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes of forwards run inside only accumulate local gradients; the next
        forward and backward outside reduces the accumulated ones."""
        previous = self.require_backward_grad_sync
        self.require_backward_grad_sync = False
        try:
            yield
        finally:
            self.require_backward_grad_sync = previous

    # --- backward -----------------------------------------------------------------------------
    def _grad_ready(self, index, grad):
        """The hook of parameter ``index``: what the engine adds to its ``.grad``."""
        if self._ready[index]:
            raise RuntimeError("Expected to mark a variable ready only once: parameter "
                               f"{self._param_names[index]} got a second gradient before the "
                               "reduction finished (one backward per forward, or no_sync())")
        self._ready[index] = True
        self._n_ready += 1
        bucket = self._buckets[self._bucket_of[index]]
        bucket.pending -= 1
        if bucket.pending:
            self._progress()
            return None
        param = self._params[index]
        for i, offset, n in bucket.members:
            view = bucket.buffer[offset:offset + n].reshape(self._params[i]._data.shape)
            if i != index:
                np.copyto(view, self._params[i]._grad._data)
            elif param._grad is None:
                np.copyto(view, grad._data)
            else:
                np.add(param._grad._data, grad._data, out=view)
        param._grad = None  # folded into the bucket
        bucket.folded = index
        bucket.work = collectives.all_reduce(Tensor._wrap(bucket.buffer), async_op=True,
                                             check=False)
        self._n_buckets_done += 1
        if self._n_buckets_done < len(self._buckets):
            return Tensor._wrap(np.zeros_like(grad._data))  # its .grad is written at the end
        return self._finish(index)

    def _progress(self):
        """Let MPI move the started reductions (it progresses inside MPI calls)."""
        for bucket in self._buckets:
            if bucket.work is not None:
                bucket.work.is_completed()

    def _finish(self, last):
        """Wait for every bucket, average, write back; returns the last parameter's gradient."""
        result = None
        for bucket in self._buckets:
            bucket.work.wait()
            bucket.work = None
            np.divide(bucket.buffer, self._world, out=bucket.buffer)
            for i, offset, n in bucket.members:
                p = self._params[i]
                value = bucket.buffer[offset:offset + n].reshape(p._data.shape)
                if i == last:
                    result = Tensor._wrap(value.copy())
                else:
                    np.copyto(p._grad._data, value)
                    p._grad._vc.value += 1
            bucket.pending = len(bucket.members)
        self._ready = [False] * len(self._params)
        self._n_ready = self._n_buckets_done = 0
        self._expect_grads = False
        return result

    def reduce_gradients(self):
        """Average every parameter's ``.grad`` across ranks now, bucket by bucket (what a
        compiled training step calls between its backward and its update)."""
        works = []
        for bucket in self._buckets:
            for i, offset, n in bucket.members:
                g = self._params[i]._grad
                if g is None:
                    raise RuntimeError(f"DistributedDataParallel: parameter "
                                       f"{self._param_names[i]} has no gradient to reduce")
                bucket.buffer[offset:offset + n] = g._data.ravel()
            works.append(collectives.all_reduce(Tensor._wrap(bucket.buffer), async_op=True,
                                                check=False))
        for bucket, work in zip(self._buckets, works):
            work.wait()
            np.divide(bucket.buffer, self._world, out=bucket.buffer)
            for i, offset, n in bucket.members:
                g = self._params[i]._grad
                np.copyto(g._data, bucket.buffer[offset:offset + n].reshape(g._data.shape))
                g._vc.value += 1


def before_compiled_step(ddps):
    """What a compiled training step does with the DistributedDataParallel modules it calls
    before its C call: refuse ``no_sync()`` (the step always updates) and broadcast buffers."""
    for ddp in ddps:
        if not ddp.require_backward_grad_sync:
            raise RuntimeError("a compiled training step always updates the parameters: it "
                               "cannot run inside DistributedDataParallel.no_sync()")
        if ddp.broadcast_buffers:
            ddp.sync_buffers()


def after_compiled_backward(ddps, optimizers):
    """The rest of a compiled training step with DistributedDataParallel: the allreduce sits
    between the compiled backward and the update, which is each optimizer's own step (one
    generated C call, see fused_optim)."""
    for ddp in ddps:
        ddp.reduce_gradients()
    for optimizer in optimizers:
        optimizer.step()


def _ready_hook(ddp_ref, index):
    def hook(grad):
        ddp = ddp_ref()
        if ddp is None or not ddp._expect_grads:
            return None
        return ddp._grad_ready(index, grad)
    return hook

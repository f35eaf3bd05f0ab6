"""``tracenet.compile_step(loss_fn, optimizer)``: a whole training step as one C call.

``loss_fn(*batch)`` computes a scalar loss with ordinary tracenet code (a model and a loss
function); the parameters are the optimizer's. One call of the compiled step does what
``optimizer.zero_grad(); loss = loss_fn(*batch); loss.backward(); optimizer.step()`` does:
forward, loss, backward and the optimizer update run inside one generated C function, and
parameters, ``.grad`` and the optimizer state are updated in place, as in eager mode.

It is exactly ``tracenet.compile`` of that step function (``tracenet/compiled_function.py``):
the same tracing, specialisations, guards and graph cache. Any optimizer whose class declares
its update (``compiled_update``, see ``tracenet/optim/compiled_update.py``) can be compiled:
SGD, Adam, AdamW, RMSprop and Adagrad, with all their options. Hyperparameters are read on
every call, so changing the learning rate (e.g. by a scheduler) does not recompile.
"""
from ._sym import is_one
from .compiled_function import CompiledFunction, stepped_while_tracing
from .step_state import declaration_of
from .tensor import Tensor


def _step_function(loss_fn, optimizer):
    """The eager training step that ``compile_step`` compiles."""
    def step(*batch):
        optimizer.zero_grad()
        loss = loss_fn(*batch)
        if not isinstance(loss, Tensor) or len(loss.shape) > 1 or \
                not all(map(is_one, loss.shape)) or not loss.dtype.is_floating_point:
            raise ValueError("the function given to compile_step must return one scalar "
                             "floating-point loss")
        # (a ``loss_fn`` that is a whole step itself, stepping the optimizer, is that step)
        if not stepped_while_tracing(optimizer):
            loss.backward()
            optimizer.step()
        return loss
    return step


def compile_step(fn, optimizer, *, dynamic=True):
    """Compile ``zero_grad -> loss = fn(*batch) -> backward -> optimizer.step`` into one C
    call; returns a callable ``step(*batch) -> loss``. As in ``tracenet.compile``, the batch
    size stays symbolic unless ``dynamic=False``."""
    declaration_of(optimizer)  # fail now for an optimizer that cannot be compiled
    if not isinstance(dynamic, bool):
        raise TypeError(f"dynamic must be a bool, got {type(dynamic).__name__}")
    return CompiledFunction(_step_function(fn, optimizer), dynamic, reach=fn,
                            optimizers=[optimizer],
                            name=f"{getattr(fn, '__name__', 'step')}_step")

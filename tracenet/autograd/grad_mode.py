"""``tracenet.autograd.grad_mode``, the public home of grad mode. It is defined in
``tracenet._grad_mode``, below Tensor and the ops, which read it."""
from .._grad_mode import (_GradModeContext, _state, enable_grad, inference_mode,  # noqa: F401
                          is_grad_enabled, no_grad, set_grad_enabled)

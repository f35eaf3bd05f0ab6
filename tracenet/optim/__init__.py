"""Optimizers: ``tracenet.optim.SGD``, ``Adam``, ``AdamW``, ``RMSprop``, ``Adagrad``."""
from . import lr_scheduler
from .adagrad import Adagrad
from .adam import Adam
from .adamw import AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD
from . import update_ops  # noqa: F401,E402  (registers the compiled-step update ops)

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "lr_scheduler"]

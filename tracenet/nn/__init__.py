"""``tracenet.nn``: modules, parameters, functional API, init and utilities."""
from .parameter import Buffer, Parameter
from .modules import *  # noqa: F401,F403
from . import functional, init, parallel, utils  # noqa: E402

"""Graph transformations: autodiff, simplification (fold/cse/dce), fusion."""
from .autodiff import grad, joint_forward
from .fusion import fuse
from .simplify import cse, dce, fold_constants, simplify

__all__ = ["grad", "joint_forward", "fuse", "cse", "dce", "fold_constants", "simplify"]

"""torch.linalg's norms (the decompositions and solvers are not supported yet)."""
from .ops.norms import linalg_norm as norm, matrix_norm, vector_norm  # noqa: F401

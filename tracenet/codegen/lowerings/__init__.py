"""The C lowerings, one module per op family. Each registers its lowerings in
``codegen.base`` (``@lowering("op")``, ``@group_lowering("group")``); importing this package
registers them all."""
from . import (activation, conv, data_movement, elementwise, gemm, loss,  # noqa: F401
               normalization, optim, pooling, reduce, scan, scatter, vision, embedding,
               weight_update)

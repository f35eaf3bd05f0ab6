"""The C lowerings, one module per op family. Each registers its lowerings in
``codegen.base`` (``@lowering("op")``, ``@group_lowering("group")``); importing this package
registers them all."""
from . import (activation, conv, conv_pointwise_sum, data_movement, elementwise,  # noqa: F401
               gemm, loss, normalization, optim, pooling, reduce, scan, scatter, vision, embedding,
               weight_update)

"""The C lowerings, one module per op family. Each registers its lowerings in
``codegen.base`` (``@lowering("op")``, ``@group_lowering("group")``); importing this package
registers them all."""
from . import (activation, conv, conv_downsample_forward, conv_downsample_weight,  # noqa: F401
               conv_pointwise_sum,
               data_movement, elementwise, gemm, loss, normalization, optim, pooling, reduce,
               scan, scatter, vision, embedding, weight_update)

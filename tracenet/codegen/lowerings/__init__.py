"""C lowerings beyond the core set in ``kernels.py``. Each module here registers its lowerings
with ``@lowering("op")`` (and elementwise C expressions in ``kernels.C_EXPR``); importing this
package registers them all."""
import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")

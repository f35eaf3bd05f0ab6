"""The Jinja environment over the kernel templates (``templates/*.c.j2``, installed as the
``tracenet.templates`` package data)."""
import functools
import os
from importlib.resources import files

import jinja2


def template_dir():
    try:
        d = files("tracenet.templates")
        path = str(d)
        if os.path.isdir(path) and any(n.endswith(".c.j2") for n in os.listdir(path)):
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    # running from a source checkout: templates/ sits next to the package
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))), "templates")


_cache_dir = [None]


def use_cache_dir(path):
    """Cache compiled templates under ``path`` (None: no cache): a warm process then skips
    Jinja's parser entirely."""
    if path != _cache_dir[0]:
        _cache_dir[0] = path
        environment.cache_clear()


@functools.lru_cache(maxsize=1)
def environment():
    bytecode = None
    if _cache_dir[0] is not None:
        path = os.path.join(_cache_dir[0], "jinja")
        os.makedirs(path, exist_ok=True)
        bytecode = jinja2.FileSystemBytecodeCache(path)
    return jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir()),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=False, lstrip_blocks=False, bytecode_cache=bytecode)


def render(template, **context):
    return environment().get_template(template).render(**context)

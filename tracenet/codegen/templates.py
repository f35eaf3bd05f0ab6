"""The Jinja environment over the kernel templates (``templates/*.c.j2``, installed as the
``tracenet.templates`` package data).

Parsing the templates is a large part of a cold compile (about a fifth of LeNet's), so their
compiled form is kept as Jinja bytecode: in the cache directory once a process has parsed
them, and, in an installed package, in ``_bytecode/`` beside the templates, written when the
package is built (``setup.py`` calls ``precompile``). Jinja checks each entry against the
template's source and the Python version, so a stale or foreign entry is parsed again."""
import functools
import hashlib
import os
from importlib.resources import files

import jinja2

SHIPPED = "_bytecode"


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


class TemplateBytecode(jinja2.BytecodeCache):
    """Jinja bytecode in ``directory`` (None: none is written), falling back to the read-only
    ``shipped`` directories. Entries are keyed by template name alone, not by the absolute path
    of its source, which differs between where the package was built and where it runs."""

    pattern = "__jinja2_%s.cache"

    def __init__(self, directory, shipped=()):
        self.directory = directory
        self.shipped = [d for d in shipped if os.path.isdir(d)]

    def get_cache_key(self, name, filename=None):
        return hashlib.sha1(name.encode()).hexdigest()

    def load_bytecode(self, bucket):
        for d in ([self.directory] if self.directory else []) + self.shipped:
            try:
                with open(os.path.join(d, self.pattern % bucket.key), "rb") as f:
                    bucket.load_bytecode(f)
            except OSError:
                continue
            if bucket.code is not None:
                return

    def dump_bytecode(self, bucket):
        if self.directory is None:
            return
        path = os.path.join(self.directory, self.pattern % bucket.key)
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as f:
                bucket.write_bytecode(f)
            os.replace(tmp, path)  # a reader never sees half an entry
        except OSError:
            try:
                os.remove(tmp)
            except OSError:
                pass


_cache_dir = [None]


def use_cache_dir(path):
    """Cache compiled templates under ``path`` (None: no cache): a warm process then skips
    Jinja's parser entirely."""
    if path != _cache_dir[0]:
        _cache_dir[0] = path
        environment.cache_clear()


def _environment(bytecode, source_dir=None):
    return jinja2.Environment(loader=jinja2.FileSystemLoader(source_dir or template_dir()),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=False, lstrip_blocks=False, bytecode_cache=bytecode)


@functools.lru_cache(maxsize=1)
def environment():
    directory = None
    if _cache_dir[0] is not None:
        directory = os.path.join(_cache_dir[0], "jinja")
        os.makedirs(directory, exist_ok=True)
    # TRACENET_PREBUILT=0 ignores what the package build wrote ahead of time: this bytecode
    # too, not only runtime.cache.prebuilt_dir's files
    shipped = [] if os.environ.get("TRACENET_PREBUILT", "").strip() == "0" else \
        [os.path.join(template_dir(), SHIPPED)]
    return _environment(TemplateBytecode(directory, shipped))


def precompile(out_dir, source_dir=None):
    """Parse every template (in ``source_dir``, default ``template_dir()``) and write its
    bytecode to ``out_dir`` (what an installed package ships in ``_bytecode/``); returns how
    many were written."""
    os.makedirs(out_dir, exist_ok=True)
    env = _environment(TemplateBytecode(out_dir), source_dir)
    names = env.list_templates(filter_func=lambda n: n.endswith(".j2"))
    for name in names:
        env.get_template(name)
    return len(names)


def render(template, **context):
    return environment().get_template(template).render(**context)

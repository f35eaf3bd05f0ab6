"""The ``tracenet`` command: print a model's IR or generated C, draw its graph, manage the build
cache.

    tracenet ir FILE.py:NAME --input 1,1,32,32 [--backward] [--no-fuse] [--eval]
    tracenet c FILE.py:NAME --input 1,1,32,32
    tracenet dot FILE.py:NAME --input 1,1,32,32 -o graph.svg
    tracenet cache info|clear

NAME is a Module class (constructed with no arguments), a function returning a Module (called
with no arguments) or a Module instance, defined at the top level of FILE.py. ``python -m
tracenet`` is the same command. Errors are one line on stderr: exit code 2 for bad arguments,
1 for anything else.
"""
import argparse
import contextlib
import importlib.util
import inspect
import os
import shutil
import subprocess
import sys
import traceback

from . import _dtype
from .ops.creation import randn
from .compiler import compile as compile_module
from .executable import optimise
from .ir import grad as ir_grad
from .nn import Module
from .runtime import cache
from .trace import trace

DTYPES = {"float32": _dtype.float32, "float64": _dtype.float64}
# how long Graphviz may take to lay out a graph
DOT_TIMEOUT = 60
# the files tracenet writes into its cache directory (``cache clear`` removes nothing else)
CACHE_SUFFIXES = (".so", ".o", ".c", ".graph", ".meta", ".lock")
CACHE_PREFIXED = (("toolchain-", ".json"), ("compiler-", ".txt"))
JINJA_DIR = "jinja"


class CliError(Exception):
    """A problem to report as one line on stderr (exit code 1)."""


# arguments ----------------------------------------------------------------------------------
def _shape(text):
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = None
    if not dims or any(d < 0 for d in dims):
        raise argparse.ArgumentTypeError(
            f"expected a shape of comma-separated non-negative integers (e.g. 1,1,32,32), "
            f"got {text!r}")
    return dims


def _target(text):
    path, sep, name = text.rpartition(":")
    if not sep or not path or not name:
        raise argparse.ArgumentTypeError(f"expected FILE.py:NAME, got {text!r}")
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{name!r} is not a Python name (in {text!r})")
    return path, name


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse's one-line error (without the usage block); exit code 2 as argparse's
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]}\n")


def _model_arguments(p, backward=True):
    p.add_argument("target", type=_target, metavar="FILE.py:NAME",
                   help="a Module class, a function returning a Module, or a Module instance "
                        "defined at the top level of FILE.py")
    p.add_argument("--input", "-i", dest="inputs", type=_shape, action="append", required=True,
                   metavar="SHAPE", help="the shape of one input, e.g. 1,1,32,32 (repeat for "
                                         "a forward taking several inputs)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help="dtype of the random inputs and of the module's floating-point "
                        "parameters and buffers (default float32)")
    p.add_argument("--eval", action="store_true",
                   help="put the module in eval mode first (dropout off, batch-norm running "
                        "statistics)")
    if backward:
        p.add_argument("--no-fuse", action="store_true",
                       help="the graph as traced, without the pass pipeline (no fusion)")
        p.add_argument("--backward", action="store_true",
                       help="also the backward graph (autodiff of the forward)")


def parser():
    top = _Parser(prog="tracenet", description="Inspect what tracenet makes of a model, and "
                                               "manage its build cache.")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    p = sub.add_parser("ir", help="print the IR of a model's forward (and backward)",
                       description="Trace NAME's forward on random inputs of the given shapes "
                                   "and print the IR, after the compiler's pass pipeline "
                                   "unless --no-fuse.")
    _model_arguments(p)
    p = sub.add_parser("c", help="print the C generated for a model",
                       description="Compile NAME with tracenet.compile, call it on random "
                                   "inputs of the given shapes and print the generated C.")
    _model_arguments(p, backward=False)
    p = sub.add_parser("dot", help="draw a model's graph (SVG with Graphviz, else .dot)",
                       description="Write NAME's forward graph (after the pass pipeline unless "
                                   "--no-fuse; the backward graph with --backward) as SVG when "
                                   "Graphviz's dot is installed, else as Graphviz source in a "
                                   ".dot file next to the requested path.")
    _model_arguments(p)
    p.add_argument("-o", "--output", default="graph.svg", metavar="PATH",
                   help="the file to write (default graph.svg; a .dot path gets the source)")
    p = sub.add_parser("cache", help="show or clear the build cache",
                       description="The build cache (TRACENET_CACHE_DIR, default "
                                   "~/.cache/tracenet): 'info' shows where it is and what it "
                                   "holds, 'clear' removes tracenet's files from it (nothing "
                                   "else in the directory; entries being built are skipped).")
    p.add_argument("action", choices=["info", "clear"])
    return top


# loading the model ---------------------------------------------------------------------------
def _describe(e):
    """``Type: first line of the message``."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _where(e, path):
    """`` (file.py:line)``: the last frame of ``e``'s traceback in the user's file, if any."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if os.path.abspath(f.filename) == path]
    return f" ({os.path.basename(path)}:{frames[-1].lineno})" if frames else ""


def _a(noun):
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def load(target):
    """The Module that ``target`` ((file, name)) names."""
    file, name = target
    path = os.path.abspath(file)
    if not os.path.isfile(path):
        raise CliError(f"no such file: {file}")
    spec = importlib.util.spec_from_file_location(
        "_tracenet_cli_" + "".join(c if c.isalnum() else "_" for c in
                                   os.path.splitext(os.path.basename(path))[0]), path)
    if spec is None or spec.loader is None:
        raise CliError(f"cannot load {file} as a Python module")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # (dataclasses and pickling look modules up by name)
    sys.path.insert(0, os.path.dirname(path))  # its sibling modules import as when run
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - any error of the user's file is reported, briefly
        raise CliError(f"importing {file} raised {_describe(e)}{_where(e, path)}") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(os.path.dirname(path))
    if not hasattr(mod, name):
        raise CliError(f"{file} has no top-level name {name!r}")
    obj = getattr(mod, name)
    if isinstance(obj, Module):
        return obj, path
    if inspect.isclass(obj) and not issubclass(obj, Module):
        raise CliError(f"{name} in {file} is a class but not a tracenet.nn.Module")
    if not callable(obj):
        raise CliError(f"{name} in {file} is {_a(type(obj).__name__)}, not a Module class, "
                       f"a function returning a Module or a Module instance")
    what = "constructing" if inspect.isclass(obj) else "calling"
    try:
        made = obj()
    except Exception as e:  # noqa: BLE001 - the user's constructor or factory
        raise CliError(f"{what} {name}() raised {_describe(e)}{_where(e, path)}") from None
    if not isinstance(made, Module):
        raise CliError(f"{name}() in {file} returned {_a(type(made).__name__)}, "
                       f"not a tracenet.nn.Module")
    return made, path


def _prepare(args):
    module, path = load(args.target)
    if args.eval:
        module.eval()
    if args.dtype != "float32":  # floating-point parameters and buffers as the inputs
        module.to(DTYPES[args.dtype])
    inputs = [randn(*shape, dtype=DTYPES[args.dtype]) for shape in args.inputs]
    return module, path, inputs


@contextlib.contextmanager
def _user_code(what, path):
    """Report an exception raised in ``what`` (tracing, compiling) as a CliError."""
    try:
        yield
    except CliError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's forward, or a model tracenet rejects
        raise CliError(f"{what} raised {_describe(e)}{_where(e, path)}") from None


def graphs(args):
    """[(title, Graph)]: the forward graph, and the backward one with ``args.backward``."""
    module, path, inputs = _prepare(args)
    name = args.target[1]
    with _user_code(f"tracing {name}", path):
        fwd = trace(module, *inputs)
        out = [("forward", fwd)]
        if args.backward:
            if not any(v.requires_grad for v in fwd.outputs):
                raise CliError(f"{name} has no backward graph: no output requires grad "
                               f"(no parameters, or all frozen)")
            # differentiated before the forward is optimised in place (as the compiler does)
            out.append(("backward", ir_grad(fwd)))
        if not args.no_fuse:
            for _, g in out:
                optimise(g)
    return out


# commands ----------------------------------------------------------------------------------
def cmd_ir(args):
    out = graphs(args)
    for i, (title, g) in enumerate(out):
        if len(out) > 1:
            print(("\n" if i else "") + f"# {title}")
        print(g)


def cmd_c(args):
    module, path, inputs = _prepare(args)
    with _user_code(f"compiling {args.target[1]}", path):
        compiled = compile_module(module)
        compiled(*inputs)
    print(compiled.source(), end="")


def cmd_dot(args):
    out = graphs(args)
    title, g = out[-1]  # the backward graph with --backward
    source = g.to_dot()
    requested = args.output
    stem, ext = os.path.splitext(requested)
    if ext == ".dot":
        _write(requested, source)
        print(f"wrote {requested}", file=sys.stderr)
        return
    dot = shutil.which("dot")
    fallback = stem + ".dot"
    if dot is None:
        _write(fallback, source)
        print(f"tracenet: Graphviz 'dot' is not installed: wrote the Graphviz source to "
              f"{fallback} instead of {requested}", file=sys.stderr)
        return
    fmt = ext[1:] or "svg"
    try:
        r = subprocess.run([dot, f"-T{fmt}", "-o", requested], input=source, text=True,
                           capture_output=True, timeout=DOT_TIMEOUT)
        problem = None if r.returncode == 0 else \
            (r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[0]
    except subprocess.TimeoutExpired:
        problem = f"it took longer than {DOT_TIMEOUT} s"
    except OSError as e:
        problem = e.strerror or str(e)
    if problem:
        _write(fallback, source)
        raise CliError(f"Graphviz dot could not write {requested} ({problem}); wrote the "
                       f"Graphviz source to {fallback}")
    print(f"wrote {requested}", file=sys.stderr)


def _write(path, text):
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


def _is_cache_file(name):
    return name.endswith(CACHE_SUFFIXES) or \
        any(name.startswith(p) and name.endswith(s) for p, s in CACHE_PREFIXED)


def cache_files(d):
    """[(path, size)] of the files tracenet wrote in ``d`` (the ``jinja`` directory counts as
    one entry of its total size). Symbolic links are listed (their own size), never followed."""
    out = []
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return out
    except OSError as e:
        raise CliError(f"cannot list the cache directory {d}: {e.strerror or e}") from None
    for name in names:
        path = os.path.join(d, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if name == JINJA_DIR and os.path.isdir(path) and not os.path.islink(path):
            size = 0
            for sub, _, files in os.walk(path):
                for f in files:
                    with contextlib.suppress(OSError):
                        size += os.lstat(os.path.join(sub, f)).st_size
            out.append((path, size))
        elif _is_cache_file(name) and not os.path.isdir(path):
            out.append((path, st.st_size))
    return out


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


def _busy(path):
    """Whether the entry of ``path`` is being built by some process right now (its lock is
    held)."""
    if not os.path.exists(cache.lock_path(path)):
        return False
    with cache.locked(path, blocking=False) as free:
        return not free


def cmd_cache(args):
    d = cache.cache_dir()
    files = cache_files(d)
    libraries = sum(1 for p, _ in files if p.endswith(".so"))
    total = sum(s for _, s in files)
    if args.action == "info":
        print(f"cache directory: {d}")
        print(f"entries: {libraries} compiled libraries, {len(files)} files, {_size(total)}")
        return
    removed = freed = 0
    skipped = set()
    for path, size in files:
        stem = os.path.basename(path).split(".", 1)[0]
        if path.endswith(CACHE_SUFFIXES) and (stem in skipped or _busy(path)):
            skipped.add(stem)
            continue
        cache.remove(path)
        removed += 1
        freed += size
    print(f"removed {removed} files ({_size(freed)}) from {d}")
    if skipped:
        print(f"skipped {len(skipped)} entries being built right now", file=sys.stderr)


COMMANDS = {"ir": cmd_ir, "c": cmd_c, "dot": cmd_dot, "cache": cmd_cache}


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
        sys.stdout.flush()
    except CliError as e:
        print(f"tracenet: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # (| head): the reader has gone, nothing left to say
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0

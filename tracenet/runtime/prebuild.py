"""What a package build compiles ahead of time, so that the first compile of a model does not:
the C compiler's probe records and the GEMM's objects (every entry point, both element
types), written to ``_prebuilt/`` in the package (``cache.prebuilt_dir``), plus the templates'
Jinja bytecode. ``setup.py`` runs it when the package is built; in a source checkout,

    python -m tracenet.runtime.prebuild

does the same for the checkout. Files are named as in the cache, by the same keys (compiler,
flags, target CPU, source), and the runtime uses one only when its key matches and its
record (size, SHA-256) checks out; otherwise it builds its own in the cache, as without them.
"""
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

from ..codegen import templates
from ..codegen.emit import gemm_sources
from . import build, target
from .cache import PACKAGE_PREBUILT, remove

# every entry point of templates/_gemm.c.j2, per element type
GEMM_ENTRY_POINTS = tuple(f"{name}_{t}"
                          for name in ("tn_gemm", "tn_gemm_nt", "tn_ggemm", "tn_gemm_dots")
                          for t in ("f32", "f64"))


def prebuild(out_dir):
    """Probe the compiler and build the GEMM objects into ``out_dir``; returns the objects'
    paths. Runs in a process of its own (``main``): the cache directory is ``out_dir`` for
    the whole process."""
    sources = gemm_sources(target.current(), GEMM_ENTRY_POINTS)
    paths = {name: build.object_path(name, text) for name, text in sources.items()}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for job in [pool.submit(build.build_object, paths[n], sources[n]) for n in sources]:
            job.result()
    for name in os.listdir(out_dir):  # (locks and scratch of the build: not shipped)
        path = os.path.join(out_dir, name)
        if name.endswith(".lock") or name.startswith(".tmp-"):
            remove(path)
        else:  # (the cache's files are private; these are read by every user of the package)
            os.chmod(path, 0o644)
    return sorted(paths.values())


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    out_dir = os.path.abspath(args[0] if args else PACKAGE_PREBUILT)
    if not args:  # (this checkout's: what earlier sources built goes)
        shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir, exist_ok=True)
    os.environ["TRACENET_CACHE_DIR"] = out_dir
    os.environ["TRACENET_PREBUILT"] = "0"  # (build them, not find them)
    if not args:  # a source checkout: its templates' bytecode too, where it is looked for
        templates.precompile(os.path.join(templates.template_dir(), templates.SHIPPED))
    for path in prebuild(out_dir):
        print(f"tracenet: prebuilt {path}")


if __name__ == "__main__":
    main()

"""The system C compiler: which one (``CC``, default gcc), its identity, and the flags it
supports. Probed once per process; each probe is a tiny test compile."""
import contextlib
import functools
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile

from .cache import CacheError, atomic_write, cache_dir, prebuilt


class CompilerError(RuntimeError):
    """The C compiler is missing or rejected the generated source."""


def run_compiler(cmd, timeout, what):
    """Run ``cmd``: (exit code, stdout, stderr). The compiler runs in its own
    process group, so a timeout kills the whole group (cc1, as, ld) and not just the
    driver."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    except OSError as e:
        raise CompilerError(f"cannot run the C compiler {cmd[0]!r} {what}: {e}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise CompilerError(f"the C compiler {cmd[0]!r} did not finish within {timeout} s "
                            f"{what}") from None
    return proc.returncode, out, err


@functools.lru_cache(maxsize=None)
def compiler():
    """(argv prefix, identity string) of the C compiler to use."""
    cc = os.environ.get("CC", "gcc").strip()
    argv = cc.split()
    if not argv or shutil.which(argv[0]) is None:
        raise CompilerError(
            f"no C compiler found: {cc!r} is not on PATH. tracenet.compile needs gcc or clang; "
            "install one (e.g. 'apt-get install gcc') or set CC to a compiler's path.")
    return tuple(argv), _identity(argv)


def _identity(argv):
    """The compiler's first ``--version`` line, remembered on disk per executable (path, size,
    modification time), so a warm process does not run the compiler at all."""
    exe = shutil.which(argv[0])
    st = os.stat(exe)
    stamp = f"{' '.join(argv)}|{os.path.realpath(exe)}|{st.st_size}|{st.st_mtime_ns}"
    path = os.path.join(cache_dir(), "compiler-" +
                        hashlib.sha256(stamp.encode()).hexdigest()[:24] + ".txt")
    for known in (path, prebuilt(path)):
        try:
            with open(known) as f:
                identity = f.read()
            if identity.strip():
                return identity
        except (OSError, ValueError, TypeError):
            pass
    _, out, err = run_compiler(list(argv) + ["--version"], 30, "for its version")
    text = out or err
    identity = text.splitlines()[0] if text else argv[0]
    _remember(path, identity)
    return identity


def _remember(path, text):
    """Keep a probe result on disk if possible (it only saves time next run)."""
    try:
        atomic_write(path, text)
    except CacheError:
        pass


_SIMPLE_PROBE = "int f(int x) { return x + 1; }\n"


def _try_compile_all(probes):
    """Which of ``probes`` ((flags, source) or (flags, source, libraries)) compile: all test
    compiles run at once."""
    argv, _ = compiler()
    with tempfile.TemporaryDirectory() as d:
        running = []
        for i, (flags, source, *libs) in enumerate(probes):
            src = os.path.join(d, f"probe{i}.c")
            with open(src, "w") as f:
                f.write(source)
            # (its output is read through a pipe: waiting for that pipe to close notices the
            # exit at once, where waiting with a timeout for the process polls)
            running.append(subprocess.Popen(
                list(argv) + list(flags) + ["-shared", "-fPIC", src, "-o",
                                            os.path.join(d, f"probe{i}.so")] +
                list(libs[0] if libs else ()),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        return [_wait(p, 60) == 0 for p in running]


def _wait(proc, timeout):
    """``proc``'s exit code; a probe that hangs is killed and counts as failed."""
    try:
        proc.communicate(timeout=timeout)
        return proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None


_OPENMP_PROBE = """
#include <omp.h>
int f(int n) { int s = 0;
#pragma omp parallel for reduction(+:s)
  for (int i = 0; i < n; i++) s += i;
  return s + omp_get_max_threads(); }
"""


# glibc's vector math library (libmvec) has SIMD versions of these: declared so (the preamble
# does it under TN_LIBMVEC), loops over them vectorise instead of calling libm per element
VECTOR_MATH = ("exp", "log", "tanh", "log1p")
_LIBMVEC_PROBE = "#include <math.h>\n" + "".join(
    f"float {f}f(float) __attribute__((simd(\"notinbranch\")));\n"
    f"double {f}(double) __attribute__((simd(\"notinbranch\")));\n" for f in VECTOR_MATH) + """
void tn_probe(float *restrict o, const float *restrict x, double *restrict p,
              const double *restrict q, int n) {
#pragma omp simd
  for (int i = 0; i < n; i++) o[i] = expf(x[i]) + logf(x[i]) + tanhf(x[i]) + log1pf(x[i]);
#pragma omp simd
  for (int i = 0; i < n; i++) p[i] = exp(q[i]) + log(q[i]) + tanh(q[i]) + log1p(q[i]);
}
"""
# a library whose vector functions are missing must fail the probe, not the first load
_LIBMVEC_LINK = ("-Wl,--no-undefined", "-lmvec", "-lm")


def libraries():
    """What every library links against."""
    return ("-lmvec", "-lm") if "-DTN_LIBMVEC" in flags() else ("-lm",)


def _probe_cache_path():
    """Probe results are kept on disk per compiler identity, so a warm process compiles
    nothing at all (not even the probes)."""
    argv, identity = compiler()
    key = hashlib.sha256(("\0".join(argv) + "\0" + identity + "\0" + target_cpu() + "\0" +
                          os.environ.get("TRACENET_NATIVE", "1") + "\0" + _march() + "\0" +
                          os.environ.get("TRACENET_OPENMP", "1") + "\0" +
                          "fma-chains\0" +  # (records from before that flag: probe again)
                          " ".join(_sanitize_flags())).encode()).hexdigest()[:24]
    return os.path.join(cache_dir(), f"toolchain-{key}.json")


def _recorded(path):
    """The probe results remembered in ``path`` (None: none, or not to be trusted)."""
    try:
        with open(path) as f:
            data = json.load(f)
        flags, omp, bits = data["flags"], data["openmp"], data["vector_bits"]
        data["libmvec"]  # (recorded before libmvec was probed: probe again)
        # a damaged file is probed again rather than trusted (flags go to every compile)
        if all(isinstance(f, str) and f.startswith("-") for f in flags + omp) and \
                "-shared" in flags and type(bits) is int:
            return tuple(flags), tuple(omp), bits
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _recorded_anywhere(path):
    """The probe results remembered in the cache file ``path``, or else in the prebuilt
    directory (probed when the package was installed)."""
    known = _recorded(path)
    if known is None and prebuilt(path) is not None:
        known = _recorded(prebuilt(path))
    return known


def probe_pending():
    """Whether asking for the flags now would run test compiles (nothing known yet, in this
    process or on disk)."""
    if _probed.cache_info().currsize:
        return False
    try:
        return _recorded_anywhere(_probe_cache_path()) is None
    except CompilerError:
        return False  # no compiler: whoever asks for the flags gets the error


@functools.lru_cache(maxsize=None)
def _probed():
    path = _probe_cache_path()
    known = _recorded_anywhere(path)
    if known is not None:
        return known
    # gnu99 rather than c99: ISO mode turns off contraction of a*b+c into FMA instructions
    # -O2: the hot loops are written with explicit vector types, and -O3 doubles build time
    out = ["-O2", "-std=gnu99", "-fPIC", "-shared", "-fno-math-errno"]
    native = os.environ.get("TRACENET_NATIVE", "1") != "0"
    openmp = os.environ.get("TRACENET_OPENMP", "1") != "0"
    march = f"-march={_march()}"
    sanitize = _sanitize_flags()
    # the usual outcome, everything works, costs one test compile (the macros the flags define
    # are read meanwhile); only when it fails does each flag get a test compile of its own
    likely = [march, "-fopenmp-simd"] + _fma_chain_flags()
    guess = _start_macros([f for f in out + sanitize + likely if f not in ("-shared", "-fPIC")])
    # one test compile for OpenMP and libmvec together, two apart only if that fails
    both = ok_mvec = _try_compile_all([
        (["-O2", "-fno-math-errno"] + likely + ["-fopenmp"] + sanitize,
         _OPENMP_PROBE + _LIBMVEC_PROBE, _LIBMVEC_LINK)])[0]
    if not both:
        both, ok_mvec = _try_compile_all([
            (likely + ["-fopenmp"] + sanitize, _OPENMP_PROBE),
            (["-O2", "-fno-math-errno"] + likely + sanitize, _LIBMVEC_PROBE, _LIBMVEC_LINK)])
    if both:
        ok_native = ok_simd = ok_omp = ok_chains = True
        ok_sanitize = [True]
    else:
        ok_native, ok_simd, ok_omp, ok_chains, *ok_sanitize = _try_compile_all([
            ([march], _SIMPLE_PROBE), (["-fopenmp-simd"], _SIMPLE_PROBE),
            (["-fopenmp"], _OPENMP_PROBE), (_fma_chain_flags() or [march], _SIMPLE_PROBE)] +
            [(sanitize, _SIMPLE_PROBE)] * bool(sanitize))
    if not all(ok_sanitize):
        raise CompilerError(f"TRACENET_SANITIZE=1 but {' '.join(compiler()[0])} cannot build "
                            "with -fsanitize=address,undefined (is libasan/libubsan installed?)")
    out += sanitize
    if native and ok_native:
        out.append(march)
    if ok_simd:
        out.append("-fopenmp-simd")
    if ok_chains:
        out += _fma_chain_flags()
    if ok_simd and ok_native and ok_mvec and native:
        out.append("-DTN_LIBMVEC")
    omp = ("-fopenmp",) if openmp and ok_omp else ()
    bits = _vector_bits([f for f in out if f not in ("-shared", "-fPIC")], guess)
    _remember(path, json.dumps({"flags": out, "openmp": list(omp), "vector_bits": bits,
                                "libmvec": "-DTN_LIBMVEC" in out}))
    return tuple(out), omp, bits


# gcc tuning for AMD Zen (-march=native there) keeps a product and a sum apart where the sum
# feeds the next one (a chain of FMAs in a loop): a register tile with one accumulator per
# vector then rounds as a multiply and an add, one with several as FMAs, so a batch of one row
# gave results other than the same row in a larger batch. These turn that tuning off.
_FMA_CHAINS = "-mtune-ctrl=^avoid_fma_chains,^avoid_fma256_chains"


def _fma_chain_flags():
    """[_FMA_CHAINS] for gcc on x86 (clang has no such tuning nor flag), else []; probed like
    the other flags."""
    _, identity = compiler()
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return [_FMA_CHAINS] if x86 and "clang" not in identity.lower() else []


def _sanitize_flags():
    """``TRACENET_SANITIZE=1``: a debug build under AddressSanitizer and UndefinedBehaviorSanitizer
    (undefined behaviour aborts). Loading it into Python needs the ASan runtime preloaded:
    ``LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0``."""
    if os.environ.get("TRACENET_SANITIZE", "0") in ("", "0"):
        return []
    return ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-g"]


def _march():
    """The CPU the generated code targets: this one by default; ``TRACENET_MARCH`` names
    another (e.g. ``x86-64-v3``, AVX2 + FMA, to check code for machines without AVX-512)."""
    return os.environ.get("TRACENET_MARCH", "native").strip() or "native"


# the widest SIMD registers the compiler may use, from the macros it predefines
_VECTOR_MACROS = (("__AVX512F__", 512), ("__AVX__", 256), ("__SSE2__", 128),
                  ("__ARM_NEON", 128))


def _start_macros(flags):
    """Start listing the macros the compiler predefines under ``flags``: (flags, process)."""
    argv, _ = compiler()
    try:
        return list(flags), subprocess.Popen(
            list(argv) + list(flags) + ["-dM", "-E", "-x", "c", os.devnull],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return list(flags), None


def _vector_bits(flags, started=None):
    """The vector width the compiler's macros under ``flags`` announce; ``started``: a listing
    ``_start_macros`` began, used if it was for these flags."""
    if started is None or started[0] != list(flags):
        if started is not None and started[1] is not None:
            started[1].kill()
            started[1].communicate()
        started = _start_macros(flags)
    proc = started[1]
    if proc is None:
        return 0
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return 0
    defined = {line.split()[1] for line in out.splitlines() if line.startswith("#define ")}
    return next((bits for macro, bits in _VECTOR_MACROS if macro in defined), 0)


def flags():
    """Optimisation flags this compiler accepts. Never -ffast-math: it would switch the whole
    process to flush-to-zero arithmetic. ``-fopenmp-simd`` lets reductions vectorise under
    ``#pragma omp simd`` without reassociating anything else."""
    return _probed()[0]


def openmp_flags():
    """Flags for OpenMP threading, or () if a test compile shows it does not work."""
    return _probed()[1]


def vector_bits():
    """Width of the widest SIMD registers the flags let the compiler use (0: none known)."""
    return _probed()[2]


def reset():
    """Forget the probed compiler (after ``CC`` changed)."""
    compiler.cache_clear()
    _probed.cache_clear()


@functools.lru_cache(maxsize=None)
def target_cpu():
    """What -march=native means here, for the cache key."""
    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") or line.startswith("flags"):
                    model += "|" + line.split(":", 1)[1].strip()
                    if line.startswith("flags"):
                        break
    except OSError:
        pass
    return model

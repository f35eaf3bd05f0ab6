"""What the generated C is built for: the compiler, its flags, OpenMP, and the one policy that
decides which kernels split their work between threads.

``tracenet.runtime`` probes the machine once and hands a ``Target`` to code generation, so
codegen never asks the toolchain itself.
"""
from .._sym import Specialize


def _at_least(x, minimum):
    """``x >= minimum``: a bool; when it depends on a size symbol, False if it did not hold
    for the traced sizes (the kernel stays serial: an OpenMP region that is mostly skipped
    still costs its outlined code), else the C condition that decides at run time."""
    try:
        return x >= minimum
    except Specialize:
        return x.hint >= minimum and f"{x} >= {minimum}"


def _all(*conditions):
    """1 or 0 when every condition is known now, else the C condition (a string) that
    OpenMP's ``if`` clause checks when the kernel runs."""
    pending = []
    for c in conditions:
        if isinstance(c, str):
            pending.append(c)
        elif not c:
            return 0
    return "(" + " && ".join(pending) + ")" if pending else 1


class Parallelism:
    """When a kernel is worth an OpenMP fork/join (every threshold lives here): 0, 1, or a C
    condition when the work depends on the batch size and was worth it at the traced batch
    size (the kernel is then built for threads and decides when it runs).

    Below these sizes a fork/join costs more than it saves; for GEMMs, moving half of the
    result into the other core's cache costs the serial kernel that reads it more than the
    split saves (measured on LeNet's fully connected layers, batch 8 against 64)."""

    compute_min_flops = 500_000      # convolutions, split over the batch
    gemm_min_flops = 2_000_000       # GEMMs, split by row blocks
    gemm_min_rows = 12
    memory_min_elements = 100_000    # memory-bound kernels, split over planes or channels
    # a linear layer's backward and SGD update at a batch of one (lowerings/weight_update.py)
    # and its forward, split by blocks of W's rows so each core keeps its rows of W, the
    # gradient and the momentum in its own cache (None: never). LeNet's fc1 (48k elements),
    # `bench/ab.py` of the step on a quiet machine, split at 32768 against never: batch 1
    # 1.03x with AVX-512, 1.08x with AVX2 only, batches 8 and 64 level (0.99-1.00x). (An
    # earlier A/B had read 0.86-0.89x with AVX2 only; that loss did not come back. On a busy
    # machine the load watch gives the call one thread, so a split does not wait for a core)
    weight_update_min_elements = 32768
    weight_update_min_rows = 16
    # transformed weights (the F(4x4) and stride-2 Winograd kernels' U, 36 x CO x CI values;
    # stride 2, 32 -> 64: docs/performance-log.md's stride-2 paragraphs) from which
    # each thread transforms all of them into its own memory before its first block instead
    # of a half each of one shared copy, whose other half its GEMMs then read from the other
    # core's cache. The ResNet's step, two threads, best of 40 calls, two runs: 64 x 64
    # channels (148k values) forward 179-182 -> 160-162 us, input gradient 176-180 -> 155-156;
    # 32 x 32 (37k) 163-166 -> 162-163 and 156-157 -> 151-152; 16 x 16 (10k, a transform of
    # 3 us) 224-229 -> 230-234 us, not worth its copy
    private_weights_min_elements = 32768
    recurrent_min_step_flops = 200_000  # recurrent loops, each step split by batch rows or
    recurrent_min_columns = 32          # by gate columns
    # rows per thread from which a recurrent loop's threads split the batch rows (no barrier
    # inside the loop) rather than the gate columns (a barrier every step)
    recurrent_min_rows_per_thread = 4

    def __init__(self, openmp):
        self.openmp = bool(openmp)

    def compute(self, flops, units=2):
        """A compute-bound kernel of ``flops`` over ``units`` independent parts."""
        return _all(self.openmp, _at_least(units, 2), _at_least(flops, self.compute_min_flops))

    def gemm(self, flops, rows):
        return _all(self.openmp, _at_least(flops, self.gemm_min_flops),
                    _at_least(rows, self.gemm_min_rows))

    def weight_update(self, elements, rows):
        """A one-row weight update touching ``elements`` of W (and as many of its gradient and
        momentum) over ``rows`` rows."""
        if self.weight_update_min_elements is None:
            return 0
        return _all(self.openmp, _at_least(rows, self.weight_update_min_rows),
                    _at_least(elements, self.weight_update_min_elements))

    def private_weights(self, elements, parallel):
        """Whether each thread of a kernel split by ``parallel`` makes its own copy of
        ``elements`` transformed weights."""
        return bool(parallel) and elements >= self.private_weights_min_elements

    def update(self, elements, both_cores_read):
        """An optimizer's elementwise update of a parameter of ``elements`` values: memory-bound,
        split from the memory-bound kernels' size, or at any size when both cores read all of
        the parameter in the step (``both_cores_read``: a 3x3 convolution's weight whose
        transformed weights each thread makes on its own, ``private_weights``), so that a
        serial update waits for the other core's copies to be invalidated. The ResNet's 64 x 64
        x 3 x 3 update on two threads, median of 20 steps, three alternating runs: serial 50-52
        us (one thread 14 us), split 29-31 us. (A split from 32768 values whatever the parameter
        cost the loop around a compiled LeNet 134 -> 207 us a step: fc1's update in the fused
        optimizer call, between eager calls, waited for the other thread)"""
        return _all(self.openmp, both_cores_read or _at_least(elements, self.memory_min_elements))

    def recurrent(self, step_flops, columns):
        """A recurrent loop whose threads split each step's gate columns, with a barrier per
        step: worth it when a step's products are large enough to pay for the barriers."""
        return _all(self.openmp, _at_least(columns, self.recurrent_min_columns),
                    _at_least(step_flops, self.recurrent_min_step_flops))

    def memory(self, elements, units):
        """A memory-bound kernel touching ``elements`` over ``units`` independent parts."""
        return _all(self.openmp, _at_least(units, 2),
                    _at_least(elements, self.memory_min_elements))


class Target:
    """``cc``: the compiler's identity; ``flags``: its optimisation flags; ``openmp``: whether
    ``-fopenmp`` works; ``vector_bits``: the widest SIMD registers the flags allow (the
    templates pick their vector code from the same compiler macros); ``max_threads``:
    per-thread scratch is reserved for at most this many threads (entry points run no more);
    ``staggered_arena``: whether memory plans stagger buffers modulo a page;
    ``l2_set_period``: the bytes after which addresses map to the same L2 sets again (sets x
    line), the period memory plans spread buffers over (0: they pack them; see
    ``codegen.memory_plan``); ``cache_dir``: where compiled templates may be cached (None:
    nowhere)."""

    max_threads = 16

    def __init__(self, cc="cc", flags=(), openmp=False, vector_bits=0, cache_dir=None,
                 staggered_arena=False, l2_set_period=0):
        self.cc = cc
        self.flags = tuple(flags)
        self.openmp = bool(openmp)
        self.vector_bits = int(vector_bits)
        self.cache_dir = cache_dir
        self.staggered_arena = bool(staggered_arena)
        self.l2_set_period = int(l2_set_period)
        self.parallel = Parallelism(openmp)

    def __repr__(self):
        # (what the generated code depends on: caches key on it)
        return (f"Target(cc={self.cc!r}, flags={self.flags!r}, openmp={self.openmp}, "
                f"vector_bits={self.vector_bits}"
                f"{', staggered_arena=True' if self.staggered_arena else ''}"
                f"{f', l2_set_period={self.l2_set_period}' if self.l2_set_period else ''})")

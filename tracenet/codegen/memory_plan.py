"""Where an entry point's intermediates and kernel scratch live in the caller's arena.

Buffers are placed first-fit over node-index lifetimes, one region per size scale: sizes that
do not depend on a size symbol share the constant regions; a size ``c * m`` (``m`` a monomial of
symbols, ``4704 * N``) is planned in units of ``m``, in the region of ``m``; a sum of terms takes
a slot sized by its largest monomial (every symbol is at least 1, so ``a * N + b <= (a + b) *
N``). Regions are laid out one after the other, so an offset is a C expression in the symbols
(``arena + (8192*tn_N+12288)``).

Staggering (``Plan(staggered=True)``). A load whose address
equals that of an earlier store still in flight modulo 4096 may wait for that store (the
load/store unit compares the low 12 address bits first: "4K aliasing"). A staggered plan
controls every buffer's offset modulo 4096 for every value of the symbols, so that a kernel's
inputs, outputs and scratch do not share their low 12 address bits (relative to the arena's
start, which is aligned to ``ALIGN`` only: a page-aligned arena measured slower at batch 64):

* every slot spans whole pages of its region: in the region of ``N`` a unit is ``N`` bytes, so
  a slot ``u`` units in starts ``u * N`` bytes in, a multiple of 4096 for every ``N`` when ``u``
  is one; region bases are then multiples of 4096 too;
* the buffer starts ``stagger`` bytes into its slot: a multiple of ``ALIGN`` chosen as far as
  possible, modulo 4096, from where the buffers live at that moment start (and from 0, where
  numpy's large arrays start);
* buffers of constant size below ``SMALL`` bytes are packed together at the start of the
  arena instead (a page per handful of bytes would spread them over many pages); their
  offsets, below a page or so, are their addresses modulo 4096 and count as taken.

Plans are packed (every buffer at ``ALIGN``) unless ``Target.staggered_arena``
(``TRACENET_ARENA=staggered``): on the AMD EPYC with AVX-512 this was measured on, LeNet's C
calls took the same time with either layout at batch 1, 8 and 64, in AVX2 and AVX-512 builds,
and with the arena at any offset modulo 4096, so the default keeps the smaller arena. The
option is there to measure a processor whose loads do stall on 4K aliasing.
"""
from .._sym import Specialize, Sym

ALIGN = 64      # every buffer's alignment (the kernels' vector loads assume it)
PAGE = 4096     # the period of 4K aliasing
SMALL = 1024    # constant-size buffers below this are packed, not staggered


class FirstFit:
    """First-fit allocation of ranges (in units of ``granule``) of one region."""

    def __init__(self, granule=ALIGN):
        self.granule = granule
        self.free = []   # (offset, size)
        self.size = 0

    def _round(self, n):
        return max(self.granule, -(-n // self.granule) * self.granule)

    def alloc(self, n):
        n = self._round(n)
        best = None
        for i, (off, size) in enumerate(self.free):
            if size >= n and (best is None or size < self.free[best][1]):
                best = i
        if best is not None:
            off, size = self.free.pop(best)
            if size > n:
                self.free.append((off + n, size - n))
            return off
        off = self.size
        self.size += n
        return off

    def release(self, off, n):
        self.free.append((off, self._round(n)))
        self.free.sort()
        merged = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


def scale_of(nbytes):
    """(monomial, units): ``nbytes`` fits in ``units`` of the monomial (``()`` for constant
    sizes) for every value of the symbols."""
    if not isinstance(nbytes, Sym):
        return (), nbytes
    monomials = sorted(nbytes.terms, key=len)
    top = monomials[-1]
    for m in monomials:
        rest = list(top)
        for s in m:
            if s not in rest:  # N*T + M: no monomial bounds the others
                raise Specialize(f"no memory plan for a buffer of {nbytes.display()} bytes")
            rest.remove(s)
    return top, sum(c for c in nbytes.terms.values() if c > 0)


def circular_distance(a, b, period=PAGE):
    d = (a - b) % period
    return min(d, period - d)


def pick_stagger(taken):
    """The multiple of ``ALIGN`` below ``PAGE`` farthest (modulo ``PAGE``) from every residue
    in ``taken``; the smallest such."""
    return max(range(0, PAGE, ALIGN),
               key=lambda c: (min((circular_distance(c, t) for t in taken), default=PAGE), -c))


class Slot:
    """A buffer's place: ``units`` of the region ``key`` from ``off`` on, the buffer itself
    ``stagger`` bytes in."""

    __slots__ = ("key", "off", "units", "stagger")

    def __init__(self, key, off, units, stagger):
        self.key, self.off, self.units, self.stagger = key, off, units, stagger


class Plan:
    """The memory plan of one entry point (see the module's docstring): ``alloc`` a slot for a
    buffer of ``nbytes`` (an int or a ``Sym``), ``release`` it when its last reader has run,
    then ``layout`` the regions and ask each slot's ``offset``."""

    def __init__(self, staggered=False):
        self.staggered = staggered
        self.regions = {}   # (monomial, packed) -> FirstFit
        self.live = {}      # id(slot) -> the buffer's residue modulo PAGE (staggered plans)

    def _region(self, key):
        if key not in self.regions:
            self.regions[key] = FirstFit(ALIGN if key[1] else PAGE)
        return self.regions[key]

    def alloc(self, nbytes):
        scale, units = scale_of(nbytes)
        packed = not self.staggered or (not scale and units < SMALL)
        key = (scale, packed)
        if packed:
            slot = Slot(key, self._region(key).alloc(units), units, 0)
            if self.staggered:  # the packed region starts the arena, a page-aligned address
                self.live[id(slot)] = slot.off % PAGE
            return slot
        stagger = pick_stagger(list(self.live.values()) + [0])
        slot = Slot(key, self._region(key).alloc(units + stagger), units + stagger, stagger)
        self.live[id(slot)] = stagger
        return slot

    def release(self, slot):
        self.regions[slot.key].release(slot.off, slot.units)
        self.live.pop(id(slot), None)

    def _order(self):
        # the packed constant region first (at the page-aligned start), then the paged constant
        # region, then the symbols' regions by degree
        return sorted(self.regions, key=lambda k: (len(k[0]), k[0], not k[1]))

    def layout(self):
        """(region base per key, total bytes): in a staggered plan every base and the total
        are multiples of ``PAGE`` for every value of the symbols."""
        base, total = {}, 0
        for key in self._order():
            base[key] = total
            size = self.regions[key].size
            if self.staggered:
                size = -(-size // PAGE) * PAGE
            total = total + (size * Sym({key[0]: 1}, 0) if key[0] else size)
        return base, total

    @staticmethod
    def offset(base, slot):
        """The byte offset of the slot's buffer in the arena (an int or a ``Sym``)."""
        scale = slot.key[0]
        return base[slot.key] + (slot.off * Sym({scale: 1}, 0) if scale else slot.off) + \
            slot.stagger

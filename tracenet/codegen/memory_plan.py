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

Spreading (``Plan(spread=period)``, the default: ``Target.l2_set_period``). The arena lies on
2 MB pages where the kernel gives them (transparent huge pages), so its addresses modulo the
L2's set period (sets x line: 2048 x 64 = 128 KB on the Sapphire Rapids measured) are physical
ones, and a packed plan puts buffers whose sizes are multiples of that period (the ResNet's
activations at batch 32: 2 MB, 1 MB, 512 KB) at one residue: a kernel walking one channel of
several such tensors across the images reads all of them through the same few sets. A spread
plan starts every buffer at a residue modulo the period that it chooses, for every value of
the symbols, without rounding slots to the period:

* a buffer's address is ``a + ((r - a) & (period - 1))``, ``a`` its place in a first-fit
  region (a C expression in the symbols) and ``r`` its residue: the pad is computed by the
  call, at most ``period - 1`` bytes;
* room for the pads: the ``k``-th distinct start of a region is moved ``k * period`` bytes
  further, so a region takes ``period`` bytes more per distinct start (the ResNet's step:
  a few MB) and buffers live together still never overlap;
* the residue is a page of the period as far as possible from the pages of the buffers live
  at that moment, and an offset in the page as far as possible from theirs (4K aliasing);
* buffers of constant size below ``SMALL`` bytes are packed at the arena's start.
With 4 KB pages (``MADV_NOHUGEPAGE``) the physical pages scatter the sets instead, but every
kernel pays TLB misses: docs/performance-log.md has both measured.

Plans are packed (every buffer at ``ALIGN``) with ``TRACENET_ARENA=packed``. They are
staggered modulo a page with ``Target.staggered_arena``
(``TRACENET_ARENA=staggered``): on the AMD EPYC with AVX-512 this was measured on, LeNet's C
calls took the same time with either layout at batch 1, 8 and 64, in AVX2 and AVX-512 builds,
and with the arena at any offset modulo 4096, so it is not the default. The option is there
to measure a processor whose loads do stall on 4K aliasing.
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


def farthest(taken, period, step):
    """The multiple of ``step`` below ``period`` farthest (modulo ``period``) from every
    residue in ``taken``; the smallest such."""
    return max(range(0, period, step),
               key=lambda c: (min((circular_distance(c, t, period) for t in taken),
                                  default=period), -c))


def pick_stagger(taken):
    """The multiple of ``ALIGN`` below ``PAGE`` farthest (modulo ``PAGE``) from every residue
    in ``taken``; the smallest such."""
    return farthest(taken, PAGE, ALIGN)


def pick_residue(taken, period):
    """A spread buffer's residue modulo ``period`` (a multiple of ``PAGE``): the page farthest
    from the pages in ``taken``, the offset in it farthest from their offsets in theirs."""
    page = farthest([t // PAGE for t in taken], period // PAGE, 1)
    return page * PAGE + farthest([t % PAGE for t in taken], PAGE, ALIGN)


class Padded:
    """The address ``at + ((residue - at) & (period - 1))`` of a spread buffer (``at`` a
    ``Sym``): ``str`` is the C expression, ``evaluate`` its value for given symbols."""

    __slots__ = ("at", "residue", "period")

    def __init__(self, at, residue, period):
        self.at, self.residue, self.period = at, residue, period

    def __str__(self):
        return f"({self.at}+(({self.residue}-{self.at})&{self.period - 1}))"

    def evaluate(self, values):
        at = self.at.evaluate(values)
        return at + (self.residue - at) % self.period


def padded(at, residue, period):
    """The first address from ``at`` on at ``residue`` modulo ``period``."""
    if isinstance(at, Sym):
        return Padded(at, residue, period)
    return at + (residue - at) % period


class Slot:
    """A buffer's place: ``units`` of the region ``key`` from ``off`` on, the buffer itself
    ``stagger`` bytes in; in a spread plan (``period`` set) ``shift`` bytes further, then
    padded to ``stagger`` modulo ``period``."""

    __slots__ = ("key", "off", "units", "stagger", "shift", "period")

    def __init__(self, key, off, units, stagger, period=0):
        self.key, self.off, self.units, self.stagger = key, off, units, stagger
        self.shift, self.period = 0, period


class Plan:
    """The memory plan of one entry point (see the module's docstring): ``alloc`` a slot for a
    buffer of ``nbytes`` (an int or a ``Sym``), ``release`` it when its last reader has run,
    then ``layout`` the regions and ask each slot's ``offset``."""

    def __init__(self, staggered=False, spread=0):
        self.staggered = staggered
        self.spread = 0 if staggered else spread  # the period of spread residues (0: none)
        self.regions = {}   # (monomial, packed) -> FirstFit
        # id(slot) -> the live buffer's residue modulo PAGE (staggered plans) or the period
        self.live = {}
        self.spread_slots = []  # every slot of a spread plan, to shift at layout

    def _region(self, key):
        if key not in self.regions:
            self.regions[key] = FirstFit(PAGE if self.staggered and not key[1] else ALIGN)
        return self.regions[key]

    def alloc(self, nbytes):
        scale, units = scale_of(nbytes)
        packed = not (self.staggered or self.spread) or (not scale and units < SMALL)
        key = (scale, packed)
        if self.spread and not packed:
            return self._alloc_spread(key, units)
        if packed:
            slot = Slot(key, self._region(key).alloc(units), units, 0)
            if self.staggered:  # the packed region starts the arena, a page-aligned address
                self.live[id(slot)] = slot.off % PAGE
            return slot
        stagger = pick_stagger(list(self.live.values()) + [0])
        slot = Slot(key, self._region(key).alloc(units + stagger), units + stagger, stagger)
        self.live[id(slot)] = stagger
        return slot

    def _alloc_spread(self, key, units):
        residue = pick_residue(list(self.live.values()) + [0], self.spread)
        slot = Slot(key, self._region(key).alloc(units), units, residue, self.spread)
        self.live[id(slot)] = residue
        self.spread_slots.append(slot)
        return slot

    def _shift_spread_slots(self):
        """Each spread slot's ``shift``: ``period`` bytes per distinct start below its own in
        its region (room for the pads); returns the room each region needs."""
        starts = {}
        for slot in self.spread_slots:
            starts.setdefault(slot.key, set()).add(slot.off)
        rank = {key: {off: k for k, off in enumerate(sorted(offs))}
                for key, offs in starts.items()}
        for slot in self.spread_slots:
            slot.shift = rank[slot.key][slot.off] * self.spread
        return {key: len(offs) * self.spread for key, offs in starts.items()}

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
        room = self._shift_spread_slots()
        for key in self._order():
            base[key] = total
            size = self.regions[key].size
            if self.staggered:
                size = -(-size // PAGE) * PAGE
            total = total + (size * Sym({key[0]: 1}, 0) if key[0] else size) + room.get(key, 0)
        return base, total

    @staticmethod
    def offset(base, slot):
        """The byte offset of the slot's buffer in the arena (an int, a ``Sym`` or, in a spread
        plan, a ``Padded``)."""
        scale = slot.key[0]
        at = base[slot.key] + (slot.off * Sym({scale: 1}, 0) if scale else slot.off)
        if slot.period:
            return padded(at + slot.shift, slot.stagger, slot.period)
        return at + slot.stagger

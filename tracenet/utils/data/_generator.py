"""Turning a ``generator=`` argument into a numpy Generator.

Accepted: None (tracenet's global RNG, looked up at use so ``manual_seed`` takes effect), a
numpy ``Generator``, an int seed, or an object with ``initial_seed()`` (a generator object
such as ``torch.Generator``'s counterpart): that one gets its own numpy stream, seeded from
``initial_seed()`` and re-seeded whenever that value changes (after ``manual_seed``).
"""
import weakref

import numpy as np

from ... import _random

_streams = weakref.WeakKeyDictionary()
_streams_by_id = {}  # objects that cannot be weakly referenced


def stateful(generator):
    """What a sampler keeps: an int seed becomes its own numpy Generator now, so that the
    stream advances from one epoch to the next (as a torch Generator's state does)."""
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator) & 0xFFFFFFFFFFFFFFFF)
    return generator


def numpy_rng(generator):
    """The numpy Generator to draw from now."""
    if generator is None or isinstance(generator, _random.Generator):
        return _random.rng(generator)
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator) & 0xFFFFFFFFFFFFFFFF)
    if callable(getattr(generator, "initial_seed", None)):
        seed = int(generator.initial_seed())
        try:
            entry = _streams.get(generator)
            store = _streams
        except TypeError:
            entry = _streams_by_id.get(id(generator))
            store = None
        if entry is None or entry[0] != seed:
            entry = (seed, np.random.default_rng(seed & 0xFFFFFFFFFFFFFFFF))
            if store is not None:
                store[generator] = entry
            else:
                _streams_by_id[id(generator)] = entry
        return entry[1]
    raise TypeError("generator must be None, an int seed, a numpy.random.Generator or an object "
                    f"with initial_seed(), but got {type(generator).__name__}")

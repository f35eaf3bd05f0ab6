"""Random generators: the global one behind randn/rand/randint, init and dropout, and
``Generator`` objects that callers pass as ``generator=`` for a stream of their own."""
import numpy as np

_MASK64 = 0xFFFFFFFFFFFFFFFF
_DEFAULT_SEED = 67280421310721  # torch's default seed of a new Generator


def _new_rng(seed):
    return np.random.default_rng(int(seed) & _MASK64)


class Generator:
    """A CPU random stream: seeded the same, it gives the same numbers every time (its
    numbers are numpy's PCG64 stream, not torch's Mersenne twister). ``ops.generator``
    adds the Tensor-valued state (``get_state``/``set_state``)."""

    def __init__(self, device="cpu"):
        dev = str(getattr(device, "type", device))
        if dev != "cpu":
            raise RuntimeError(f"Device type {dev.upper()} is not supported for torch.Generator()"
                               " api.")
        self._seed = _DEFAULT_SEED
        self._rng = _new_rng(self._seed)

    def manual_seed(self, seed):
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise TypeError(f"manual_seed expected a long, but got {type(seed).__name__}")
        seed = int(seed)
        if not -0x8000000000000000 <= seed <= _MASK64:
            raise RuntimeError("Overflow when unpacking long long")
        self._seed = seed & _MASK64
        self._rng = _new_rng(self._seed)
        return self

    def seed(self):
        s = int(np.random.SeedSequence().entropy) & 0x7FFFFFFFFFFFFFFF
        self.manual_seed(s)
        return s

    def initial_seed(self):
        return self._seed

    def state_words(self):
        """The stream's position as 7 unsigned 64-bit words (PCG64's state and increment,
        its buffered half-word, the seed)."""
        st = self._rng.bit_generator.state
        words = []
        for w in (st["state"]["state"], st["state"]["inc"]):
            words += [(w >> 64) & _MASK64, w & _MASK64]
        return words + [st["has_uint32"], st["uinteger"], self._seed]

    def set_state_words(self, words):
        rng = np.random.default_rng()
        rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": (words[0] << 64) | words[1], "inc": (words[2] << 64) | words[3]},
            "has_uint32": words[4], "uinteger": words[5]}
        self._rng, self._seed = rng, words[6]

    def __repr__(self):
        return f"<torch._C.Generator object at {id(self):#x}>"


default_generator = Generator()
default_generator.manual_seed(0)


def set_default_generator(generator):
    """Make ``generator`` the global one (``ops.generator`` installs its Tensor-aware
    subclass here at import)."""
    global default_generator
    default_generator = generator


def manual_seed(seed):
    seed = int(seed)
    default_generator.manual_seed(seed & _MASK64)
    default_generator._seed = seed
    return default_generator._rng


def initial_seed():
    return default_generator._seed


def rng(generator=None):
    """The numpy stream to draw from: ``generator``'s, or the global one."""
    if generator is None:
        return default_generator._rng
    if not isinstance(generator, Generator):
        raise TypeError(f"expected a torch.Generator, but got {type(generator).__name__}")
    return generator._rng

"""``tracenet.Generator``: the random stream of ``_random`` with its state as a tensor."""
import numpy as np

from .. import _random
from ..tensor import Tensor, device


class Generator(_random.Generator):
    @property
    def device(self):
        return device("cpu")

    def get_state(self):
        """The stream's position as an int64 tensor (torch returns bytes; only ``set_state``
        reads it)."""
        return Tensor._wrap(np.array(self.state_words(), dtype=np.uint64).view(np.int64).copy())

    def set_state(self, new_state):
        if not isinstance(new_state, Tensor):
            raise TypeError(f"expected a torch.ByteTensor, but got {type(new_state).__name__}")
        data = np.asarray(new_state._data).reshape(-1)
        if data.dtype != np.int64 or data.size != 7:
            raise RuntimeError("Expected either a PhiloxCudaState or a CPUGeneratorImplState")
        self.set_state_words([int(v) for v in data.view(np.uint64)])
        return self


def _install_default():
    """The global stream becomes a Generator of this class, at the same position."""
    old = _random.default_generator
    new = Generator()
    new._rng, new._seed = old._rng, old._seed
    _random.set_default_generator(new)
    return new


default_generator = _install_default()

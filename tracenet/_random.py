"""The global random generator behind randn/rand/randint, init and dropout."""
import numpy as np

_state = {"rng": np.random.default_rng(0), "seed": 0}


def manual_seed(seed):
    seed = int(seed)
    _state["rng"] = np.random.default_rng(seed & 0xFFFFFFFFFFFFFFFF)
    _state["seed"] = seed
    return _state["rng"]


def initial_seed():
    return _state["seed"]


def rng():
    return _state["rng"]

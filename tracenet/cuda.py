"""``tracenet.cuda``: there is no GPU; the checks tutorials make answer accordingly."""


def is_available():
    return False


def device_count():
    return 0


def is_initialized():
    return False


def manual_seed(seed):
    """No-op, as in torch when CUDA is absent."""


def manual_seed_all(seed):
    """No-op, as in torch when CUDA is absent."""


def synchronize(device=None):
    raise RuntimeError("tracenet runs on the CPU only; there is no CUDA device to synchronize")


def current_device():
    raise RuntimeError("tracenet runs on the CPU only; there is no current CUDA device")

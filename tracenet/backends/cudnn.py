"""``tracenet.backends.cudnn``: accepted settings with no effect (there is no cuDNN)."""
benchmark = False
deterministic = False
enabled = True
allow_tf32 = True


def is_available():
    return False


def version():
    return None

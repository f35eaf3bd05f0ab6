"""``python -m tracenet``: the ``tracenet`` command (see ``tracenet.cli``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

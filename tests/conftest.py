"""The suite's processes ignore a prebuilt directory (``python -m tracenet.runtime.prebuild``
in this checkout): tests that count compiler runs expect the cache alone. The prebuilt path
has its own tests (tests/test_prebuilt.py), which point ``TRACENET_PREBUILT`` at theirs."""
import os

os.environ["TRACENET_PREBUILT"] = "0"

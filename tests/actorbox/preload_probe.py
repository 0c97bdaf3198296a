"""A module actors preload in tests: it records when (and in which process) it was imported."""

import os
import time

IMPORTED_AT = time.monotonic()
IMPORTED_IN = os.getpid()

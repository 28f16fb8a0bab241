"""Handing freed memory back between the export's stages, so that the peak is one stage's."""

from __future__ import annotations

import ctypes
import gc


def release_memory() -> None:
    """Collect garbage and return the freed heap to the system: glibc keeps it for reuse otherwise,
    and the next stage's (different-sized) allocations would come on top."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused, just not returned
        pass

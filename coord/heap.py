"""A long-running process's startup objects kept out of the garbage collector's full passes.

CPython's cyclic collector walks every tracked object of a generation on each of its passes; the
oldest generation holds everything a process built while starting (modules, pydantic schemas and
validators: tens of thousands of objects for corral) and is walked again and again although none of
it ever becomes garbage. :func:`freeze_startup` moves what exists once the process is set up into
the collector's permanent generation (``gc.freeze``), so later passes walk only what was made since.
Measured on a Dispatcher and a Worker in one process (2-core machine, 4,000 tasks): full
collections 854 -> 196 ms, client CPU per task 593 -> 504 us.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup"]


def freeze_startup() -> None:
    """Collect once, then freeze every object that exists now (call it once a long-running process is
    set up: connected, its handler imported). Objects made before it are never collected afterwards,
    so call it after setup, not amid work whose garbage should be reclaimed."""
    gc.collect()
    gc.freeze()

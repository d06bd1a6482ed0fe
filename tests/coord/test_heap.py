"""freeze_startup: what exists once a process is set up leaves the collector's passes; later garbage does not."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_startup_objects_are_frozen_and_later_cyclic_garbage_is_still_collected() -> None:
    code = textwrap.dedent(
        """
        import gc, weakref
        import coord, dispatch, workers  # a process's startup: corral imported
        from coord.heap import freeze_startup

        class Node:
            pass

        freeze_startup()
        assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
        later = Node()
        later.self = later  # a cycle made after the freeze: still the collector's
        alive = weakref.ref(later)
        del later
        gc.collect()
        assert alive() is None
        print("ok", gc.get_freeze_count())
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")

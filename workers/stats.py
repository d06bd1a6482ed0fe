"""The one stats model of a worker: :class:`WorkerStats`, counted by its intake, runs and runtime."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["WorkerStats"]


@dataclass
class WorkerStats:
    """Counters of what one worker did (one instance per worker, shared by the parts that count)."""

    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    stale_rejected: int = 0
    """Outcomes refused because the claim was no longer current (reclaimed or cancelled meanwhile)."""
    dropped_notifications: int = 0
    """Stale or duplicate notifications acked and dropped."""
    renewed_notifications: int = 0
    """Notifications replaced by a fresh one (delivered too often while waiting, or with an unreadable count)."""
    dead_lettered: int = 0
    """Notifications and specs dead-lettered."""
    released: int = 0
    """Claims handed back unfinished on a graceful stop."""
    unrecorded: int = 0
    """Outcomes that could not be written in time (the task is re-run after its lease)."""
    taken_away: int = 0
    """Handlers stopped because their claim ended elsewhere (cancelled, or reclaimed) before they did."""
    presence_losses: int = 0
    """Times the worker failed closed (and joined again unless told to exit)."""
    loop_blocks: int = 0
    """Times its event loop was blocked for longer than a second."""

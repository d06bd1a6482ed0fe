"""One short human line per lifecycle event."""

from __future__ import annotations

import re

from coord.events.models import Errored, Progress, ScopeSubDelegated, ShutDown, TurnEnded

__all__ = ["render_event"]

_SPACES = re.compile(r"\s+")


def _short(text: str, limit: int = 160) -> str:
    text = _SPACES.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_event(event: TurnEnded | Errored | ShutDown | ScopeSubDelegated | Progress) -> str:
    """One short human line for ``event`` (whitespace collapsed, long text cut)."""
    who = f"`{event.agent}`"
    match event:
        case TurnEnded():
            turn = f" {event.turn}" if event.turn is not None else ""
            summary = f": {_short(event.summary)}" if event.summary.strip() else ""
            return f"{who} finished turn{turn}{summary}." if turn else f"{who} finished a turn{summary}."
        case Errored():
            return f"{who} reported an error: {_short(event.message)}"
        case ShutDown():
            reason = f" ({_short(event.reason)})" if event.reason.strip() else ""
            return f"{who} has stopped{reason}."
        case ScopeSubDelegated():
            scope = f" [{_short(', '.join(event.scope), 80)}]" if event.scope else ""
            return f"{who} spawned `{event.sub_agent}` and delegated scope to it{scope}."
        case Progress():
            pct = f" {round(event.fraction * 100)}%" if event.fraction is not None else ""
            message = f": {_short(event.message)}" if event.message.strip() else ""
            return f"{who} progress{pct}{message}"

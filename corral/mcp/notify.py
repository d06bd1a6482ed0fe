"""Telling MCP clients that a resource changed: both subscription styles of the protocol.

Clients of the 2026-07-28 protocol open ``subscriptions/listen`` streams; the SDK fans the
``ResourceUpdated`` events of one :class:`InMemorySubscriptionBus` out to them. Clients of the
earlier protocol send ``resources/subscribe`` and get ``notifications/resources/updated`` on their
own session: :class:`Notifier` keeps those subscriptions and sends the notifications itself.
"""

from __future__ import annotations

import logging
from typing import Any

from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated

__all__ = ["Notifier"]

log = logging.getLogger("corral.mcp")


class Notifier:
    """One place that says "resource ``uri`` changed" to every client that asked to hear it."""

    def __init__(self) -> None:
        self.bus = InMemorySubscriptionBus()
        """The bus handed to the MCP server for ``subscriptions/listen`` streams."""
        self._legacy: dict[str, list[ServerSession]] = {}

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.SubscribeRequestParams
    ) -> types.EmptyResult:
        """The ``resources/subscribe`` handler: remember the session for ``params.uri``."""
        sessions = self._legacy.setdefault(str(params.uri), [])
        if ctx.session not in sessions:
            sessions.append(ctx.session)
        return types.EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: types.UnsubscribeRequestParams
    ) -> types.EmptyResult:
        """The ``resources/unsubscribe`` handler."""
        sessions = self._legacy.get(str(params.uri), [])
        if ctx.session in sessions:
            sessions.remove(ctx.session)
        return types.EmptyResult()

    async def updated(self, uri: str) -> None:
        """Tell every subscriber of ``uri`` (both styles) that it changed; never raises."""
        try:
            await self.bus.publish(ResourceUpdated(uri=uri))
        except Exception as err:  # a listener's trouble never reaches the substrate's callbacks
            log.debug("resource %s: listen fan-out failed: %s", uri, err)
        for session in list(self._legacy.get(uri, [])):
            try:
                await session.send_resource_updated(uri)
            except Exception as err:  # the client went away: forget it
                log.debug("resource %s: subscriber gone (%s)", uri, err)
                self._legacy[uri].remove(session)

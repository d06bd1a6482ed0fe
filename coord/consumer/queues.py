"""The durable consumers of a queue's priority levels: their one configuration, creation and check.

:func:`queue_consumer_config` is the only place that says what a queue's consumers look like; the
provisioner (``corral provision --queue``), a parent that first submits to a queue, the worker's check
and the tests all use it. Creating one is a trusted act (in NATS a create with a different config is
an update, so whoever may create may also re-point it): a worker credential may not.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js import api as js_api

from coord.consumer.policy import SERVER_MAX_DELIVER
from coord.naming import JS_API_PREFIX, Names
from coord.permissions import permission_log
from coord.priority import LEVELS, Priority

__all__ = [
    "CHECKED",
    "NOTIFICATION_ACK_WAIT",
    "create_queue_consumers",
    "create_subject",
    "differences",
    "queue_consumer_config",
]

NOTIFICATION_ACK_WAIT = 5.0
"""Seconds a fetched notification may stay unacked before redelivery. It only covers fetch -> claim
(milliseconds); a worker that dies in between delays the task by at most this much. A redelivered
notification whose task was claimed meanwhile is simply dropped."""

CHECKED = ("filter_subject", "ack_policy", "ack_wait", "max_deliver", "max_ack_pending", "deliver_policy")
"""The fields a worker compares with :func:`queue_consumer_config` (what decides what it is given)."""


def queue_consumer_config(names: Names, queue: str, priority: Priority = Priority.NORMAL) -> js_api.ConsumerConfig:
    """The configuration of the shared durable consumer of ``queue`` at ``priority``."""
    return js_api.ConsumerConfig(
        durable_name=names.queue_consumer(queue, priority),
        filter_subject=names.queue_filter(queue, priority),
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=NOTIFICATION_ACK_WAIT,
        max_deliver=SERVER_MAX_DELIVER,
        max_ack_pending=-1,
        max_waiting=4096,
    )


def create_subject(stream: str, durable: str) -> str:
    """The JetStream API subject corral creates (and updates) durable ``durable`` of ``stream`` on."""
    return f"{JS_API_PREFIX}.CONSUMER.DURABLE.CREATE.{stream}.{durable}"


async def create_queue_consumers(nc: NATS, js: JetStreamContext, names: Names, queue: str) -> list[str]:
    """Create the consumers of every priority level of ``queue``, or set them back to
    :func:`queue_consumer_config` (a trusted role's act: provisioner, parent, or a dev server without
    auth). Returns their names, most urgent first; a credential that may not raises
    :class:`coord.errors.PermissionDenied` at once."""
    made = []
    stream = names.dispatch_stream
    for priority in LEVELS:
        config = queue_consumer_config(names, queue, priority)
        assert config.durable_name is not None
        with permission_log(nc).guard(create_subject(stream, config.durable_name)):
            await js.add_consumer(stream, config)
        made.append(config.durable_name)
    return made


def _norm(field: str, value: object) -> object:
    if field == "max_ack_pending" and isinstance(value, int) and value <= 0:
        return -1  # the server may answer its own default for "unlimited"
    if isinstance(value, float):
        return round(value, 3)
    return value


def differences(want: js_api.ConsumerConfig, have: js_api.ConsumerConfig) -> list[str]:
    """The :data:`CHECKED` fields in which ``have`` (the server's) differs from ``want``, each as
    ``field: 'have' (want 'want')``; empty when they agree."""
    out = []
    for field in CHECKED:
        mine, theirs = _norm(field, getattr(want, field)), _norm(field, getattr(have, field))
        if mine != theirs:
            out.append(f"{field}: {theirs!r} (want {mine!r})")
    return out

"""The one JetStream pull-consumer component every corral consuming loop uses.

- :mod:`~coord.consumer.policy`: deliveries -> back-off -> dead letter, one policy for every path (pure);
- :class:`Settler`: ack, put back, terminate, dead-letter, each failure logged;
- :class:`Puller`: raw no-wait and idle pulls from one durable consumer;
- :class:`OrderedReader`: a subject read in order without a durable position (mailbox readers);
- :class:`ConsumerCheck`: notices a deleted or re-pointed consumer (re-creates a lost one when permitted);
- :class:`Slots` / :class:`Reservation`: capacity reserved per batch, given back on every exit path;
- :func:`queue_consumer_config`: the one configuration of a queue's consumers.
"""

from coord.consumer.check import CHECK_INTERVAL, ConsumerCheck
from coord.consumer.ordered import OrderedReader
from coord.consumer.policy import (
    EVENTS,
    FAILING,
    RENEW_AT,
    SERVER_MAX_DELIVER,
    WAIT_CAP,
    Backoff,
    deliveries,
    must_renew,
    waiting_delay,
)
from coord.consumer.pull import Puller, PullRefused
from coord.consumer.queues import (
    NOTIFICATION_ACK_WAIT,
    create_queue_consumers,
    differences,
    queue_consumer_config,
)
from coord.consumer.reservation import Reservation, Slots
from coord.consumer.settle import Settler

__all__ = [
    "CHECK_INTERVAL",
    "EVENTS",
    "FAILING",
    "NOTIFICATION_ACK_WAIT",
    "RENEW_AT",
    "SERVER_MAX_DELIVER",
    "WAIT_CAP",
    "Backoff",
    "ConsumerCheck",
    "OrderedReader",
    "PullRefused",
    "Puller",
    "Reservation",
    "Settler",
    "Slots",
    "create_queue_consumers",
    "deliveries",
    "differences",
    "must_renew",
    "queue_consumer_config",
    "waiting_delay",
]

"""Parent side of corral: specs, the dispatcher, the reclaimer and subprocess workers."""

from coord.wire import Result, ResultError, ResultKind, Spec, TaskInput, build_spec, format_result, parse_result
from dispatch.dispatcher import Dispatcher, result_of
from dispatch.reclaimer import Reclaimer, ReclaimEvent
from dispatch.spawn import SpawnedWorker, SpawnOutcome, build_worker_command, wait_worker_absent

__all__ = [
    "Dispatcher",
    "ReclaimEvent",
    "Reclaimer",
    "Result",
    "ResultError",
    "ResultKind",
    "SpawnOutcome",
    "SpawnedWorker",
    "Spec",
    "TaskInput",
    "build_spec",
    "build_worker_command",
    "format_result",
    "parse_result",
    "result_of",
    "wait_worker_absent",
]

"""Peer benchmark: corral against saq, dramatiq, streaq, Celery, arq, taskiq-nats and raw nats-py floors, one table.

    python3 dev.py bench peers [--tasks 10000 --rounds 3 --latency 200 --systems corral,arq --json out.json]
    python -m bench.peers ...          # the same, from the project's virtualenv at the repository root

Every system runs the same scenario (:class:`bench.peers.common.Scenario`): no-op tasks submitted by
one producer (this process) to 2 worker processes, a task counted when its result reached the
producer, several rounds through the same producer, then tasks one at a time for latency. Every row
shows results/s per round (and the last round's over the first's), one-at-a-time p50/p99 and CPU per
task split by producer, workers and broker (streaq also executions/s: its results come back much
later than its tasks run). Each system lives in its own module with one
``run(scenario, brokers) -> SystemResult`` function; the runner (:mod:`bench.peers.runner`) starts
redis-server and nats-server on loopback and prints the table.
"""

"""`corral ui` in a real headless browser (Debian's chromium) against a real fleet: real nats-server,
`corral worker` and `corral reclaimer` processes, the dashboard as its own `corral ui` process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from coord.server import NatsServer
from coord.wire import Spec
from tests.conftest import PYTHON
from tests.corral.helpers_ui import QUEUE, Fleet, attributes, chromium, find, schedule, task_status, texts, until


@pytest.fixture
def fleet(nats_server: NatsServer, namespace: str, subprocess_env: dict[str, str], tmp_path: Path) -> Iterator[Fleet]:
    """The processes of this test (ended at its end, each by its own handle)."""
    fleet = Fleet(nats_server.url, namespace, subprocess_env, tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """A headless chromium of this test's own."""
    with chromium() as driver:
        yield driver


def agent_rows(browser: webdriver.Chrome) -> set[str]:
    return set(attributes(browser, "#agents-table tbody tr[data-agent]", "data-agent"))


def test_page_lists_the_live_agents(fleet: Fleet, browser: webdriver.Chrome) -> None:
    fleet.worker("w1")
    fleet.worker("w2", concurrency=3)
    browser.get(fleet.ui())
    until(lambda: agent_rows(browser) == {"w1", "w2"}, 30, "both workers listed")
    row = texts(browser, "#agents-table tr[data-agent=w2]")[0]
    assert "worker" in row and QUEUE in row and "0/3" in row, row
    assert texts(browser, "#mode") == ["read-only"]
    # a worker that joins later appears without a reload
    browser.execute_script("window.notReloaded = true")
    fleet.worker("w3")
    until(lambda: "w3" in agent_rows(browser), 30, "w3 listed once it joined")
    until(lambda: "w3" in texts(browser, "#timeline li[data-kind=joined]")[0], 10, "w3's join on the timeline")
    assert browser.execute_script("return window.notReloaded") is True


def test_sigkilled_workers_departure_and_the_reclaim_appear_without_a_reload(
    fleet: Fleet, browser: webdriver.Chrome
) -> None:
    victim = fleet.worker("w1", concurrency=2)
    fleet.worker("w2", concurrency=2)
    fleet.start("reclaimer", "reclaimer")
    browser.get(fleet.ui())
    until(lambda: agent_rows(browser) == {"w1", "w2"}, 30, "both workers listed")
    long_tasks = [Spec(task_id=f"long{i}", queue=QUEUE, payload={"seconds": 30}) for i in range(4)]
    schedule(fleet.url, fleet.namespace, long_tasks)
    until(lambda: "2/2" in "".join(texts(browser, "#agents-table tr[data-agent=w1]")), 30, "w1 running two tasks")
    browser.execute_script("window.notReloaded = true")

    os.kill(victim.pid, signal.SIGKILL)

    until(lambda: find(browser, "#departures li[data-departed=w1][data-reason=expired]"), 20, "w1's departure")
    assert "w1" not in agent_rows(browser)
    left = until(lambda: texts(browser, "#timeline li[data-kind=left][data-agent=w1]"), 5, "departure on the timeline")
    assert "expired" in left[0]
    reclaims = until(
        lambda: len(find(browser, "#timeline li[data-kind=reclaimed][data-agent=w1]")) >= 2 or None,
        20,
        "w1's two claims reclaimed on the timeline",
    )
    assert reclaims
    lines = texts(browser, "#timeline li[data-kind=reclaimed][data-agent=w1]")
    assert all("reclaimed from w1" in line and "pending again" in line for line in lines), lines
    assert browser.execute_script("return window.notReloaded") is True, "the page must not have reloaded"


def _dead_task(fleet: Fleet) -> str:
    fleet.worker("w1")
    schedule(fleet.url, fleet.namespace, [Spec(task_id="doomed", queue=QUEUE, payload={"fail_before_epoch": 2})],
             max_attempts=1)  # fmt: skip
    until(lambda: task_status(fleet.url, fleet.namespace, "doomed") == "dead", 30, "the task to die", every=0.3)
    return "doomed"


def test_dead_letter_retry_works_with_actions_allowed(fleet: Fleet, browser: webdriver.Chrome) -> None:
    task = _dead_task(fleet)
    browser.get(fleet.ui("--allow-actions") + "#dead")
    assert until(lambda: texts(browser, "#mode"), 10, "the mode badge") == ["actions allowed"]
    button = until(lambda: find(browser, f"#dead-table button.action-retry[data-task={task}]"), 15, "Retry button")
    browser.execute_script("window.notReloaded = true")
    button[0].click()

    toast = until(lambda: next(iter(texts(browser, "#toast.ok")), None), 10, "the retry's confirmation")
    assert f"retry: {task} is pending" in toast
    until(lambda: task_status(fleet.url, fleet.namespace, task) == "succeeded", 30, "the retried task to succeed")
    until(lambda: find(browser, f"#timeline li[data-kind=retried][data-task={task}]"), 10, "the retry on the timeline")
    until(lambda: not find(browser, f"#dead-table tr[data-task={task}]"), 10, "the task to leave the dead list")
    assert browser.execute_script("return window.notReloaded") is True


def test_dead_letter_retry_is_refused_without_allow_actions(fleet: Fleet, browser: webdriver.Chrome) -> None:
    task = _dead_task(fleet)
    browser.get(fleet.ui() + "#dead")
    until(lambda: find(browser, f"#dead-table tr[data-task={task}][data-status=dead]"), 15, "the dead task listed")
    assert texts(browser, "#mode") == ["read-only"]
    assert not find(browser, "button.action-retry, button.action-cancel"), "a read-only page offers no action"

    # Even a request made by hand (the page's own origin, the action header set) is refused.
    answer = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch('/api/tasks/' + arguments[0] + '/retry', {method: 'POST', headers: {'X-Corral-Action': '1'}})
          .then(r => r.json().then(body => done({status: r.status, error: body.error})));
        """,
        task,
    )
    assert answer["status"] == 403 and "read-only" in answer["error"], answer
    assert task_status(fleet.url, fleet.namespace, task) == "dead", "the refused retry changed nothing"


def test_demo_prints_the_dashboard_url_and_serves_it_while_its_fleet_runs(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    err = (tmp_path / "demo.err").open("wb")
    demo = subprocess.Popen(
        [PYTHON, "-m", "corral", "demo", "--json", "-N", "2", "-M", "8", "--ttl", "2", "--ui-port", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=subprocess_env,
        start_new_session=True,  # its own process group: a failed test ends the demo's workers and server too
    )  # fmt: skip
    err.close()
    try:
        line = until(
            lambda: next(
                (ln for ln in (tmp_path / "demo.err").read_text().splitlines() if ln.startswith("dashboard:")), None
            ),
            60,
            "the dashboard's URL on stderr",
        )
        url = line.split()[-1]

        def fleet_shown() -> bool:
            with urllib.request.urlopen(url + "api/state", timeout=10) as answer:
                state = json.load(answer)
            return {agent["id"] for agent in state["agents"]} >= {"demo-w1", "demo-w2"}

        until(fleet_shown, 30, "the demo's workers on its dashboard", every=0.2)
        out, _ = demo.communicate(timeout=150)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of its group is left (nothing, when it passed)
            os.killpg(demo.pid, signal.SIGKILL)
        demo.wait()
    assert demo.returncode == 0, (tmp_path / "demo.err").read_text()
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["succeeded"] == 8, "stdout holds only the demo's JSON"
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "api/state", timeout=5)  # the dashboard stopped with the fleet


def test_queue_limits_delayed_tasks_and_schedules_set_from_the_cli_appear_on_the_page(
    fleet: Fleet, browser: webdriver.Chrome
) -> None:
    browser.get(fleet.ui())
    until(lambda: find(browser, "body[data-ready*=tasks]"), 30, "the dashboard ready")
    for args in (
        ("queues", "limit", QUEUE, "--concurrency", "2", "--rate", "20/s"),
        ("submit", "-q", QUEUE, "--id", "later", "--delay", "600"),
        ("submit", "-q", QUEUE, "--id", "urgent", "--priority", "high", "--delay", "600"),
        ("schedules", "add", "nightly", "--cron", "0 3 * * *", "-q", QUEUE),
    ):
        done = fleet.run(*args)
        assert done.returncode == 0, done

    row = f"#queues-table tr[data-queue={QUEUE}]"
    until(lambda: "running 0/2 · rate 20/s" in " ".join(texts(browser, row)), 15, "the queue's limits")
    # read as one poll: the live page may re-render the row between finding a cell and reading it
    depth = until(lambda: texts(browser, f"{row} td")[1:3], 15, "the queue's depth cells")
    assert depth == ["2", "2"], "depth 2, both delayed"
    schedule_row = until(lambda: texts(browser, "#schedules-table tr[data-schedule=nightly]"), 15, "the schedule")
    assert "0 3 * * * (UTC)" in schedule_row[0] and QUEUE in schedule_row[0]

    browser.execute_script("location.hash = '#tasks'")
    until(lambda: "delayed until" in " ".join(texts(browser, "#tasks-table tr[data-task=later]")), 15, "delayed")
    urgent = until(lambda: texts(browser, "#tasks-table tr[data-task=urgent]"), 10, "the urgent task")[0]
    assert "high" in urgent and "delayed until" in urgent

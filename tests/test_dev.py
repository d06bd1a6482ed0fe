"""dev.py's decision about system packages, offline: what is missing, how it installs, what it says."""

from __future__ import annotations

import dev


def _without(*commands: str) -> list[dev.Need]:
    return dev.missing(lambda command: command not in commands)


def test_every_package_the_tests_need_is_in_one_list_and_found_by_its_command() -> None:
    assert {need.package for need in dev.NEEDS} == {
        "iproute2",
        "openssl",
        "chromium",
        "chromium-driver",
        "nodejs",
        "npm",
        "redis-server",
    }
    assert _without() == []
    assert [need.package for need in _without("chromedriver")] == ["chromium-driver"]


def test_without_chromedriver_outside_ci_it_says_one_line_and_leaves_the_browser_tests_out() -> None:
    line, extra, stop = dev.verdict(_without("chromedriver"), ci=False)
    assert line == (
        "missing system packages chromium-driver: leaving out tests/corral/test_ui.py; "
        "to run everything: sudo apt-get install -y chromium-driver"
    )
    assert extra == ["--ignore=tests/corral/test_ui.py"]
    assert stop is False


def test_in_ci_a_missing_browser_stops_the_run_and_nothing_is_left_out() -> None:
    line, extra, stop = dev.verdict(_without("chromium", "chromedriver"), ci=True)
    assert line is not None and "\n" not in line
    assert "chromium, chromium-driver" in line and "sudo apt-get install -y chromium chromium-driver" in line
    assert extra == [] and stop is True


def test_several_missing_packages_make_one_line_and_tests_that_skip_themselves_are_not_ignored() -> None:
    line, extra, stop = dev.verdict(_without("ip", "openssl", "chromedriver"), ci=False)
    assert line is not None and "\n" not in line
    assert "chromium-driver, iproute2, openssl" in line
    assert extra == ["--ignore=tests/coord/test_connection_security.py", "--ignore=tests/corral/test_ui.py"]
    assert not stop
    only_ip = dev.verdict(_without("ip"), ci=False)
    assert only_ip[1] == [] and "skip" in str(only_ip[0]), "tests/chaos/test_partition.py skips itself without ip"


def test_nothing_missing_says_nothing() -> None:
    assert dev.verdict([], ci=True) == (None, [], False)
    assert dev.verdict([], ci=False) == (None, [], False)


def test_it_installs_as_root_or_through_passwordless_sudo_and_only_with_apt_get() -> None:
    assert dev.installer(root=True, sudo=False, apt=True) == ["apt-get"]
    assert dev.installer(root=False, sudo=True, apt=True) == ["sudo", "-n", "apt-get"]
    assert dev.installer(root=False, sudo=False, apt=True) is None
    assert dev.installer(root=True, sudo=True, apt=False) is None


def test_without_node_the_typescript_worker_tests_are_left_out_outside_ci() -> None:
    line, extra, stop = dev.verdict(_without("node", "npm"), ci=False)
    assert line is not None and "nodejs, npm" in line and "sudo apt-get install -y nodejs npm" in line
    assert extra == [f"--ignore={test}" for test in sorted(dev.NODE_TESTS)]
    assert not stop

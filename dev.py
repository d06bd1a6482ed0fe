#!/usr/bin/env python3
"""Bootstrap and run corral from a fresh clone with nothing but Python 3.11+.

    python3 dev.py demo [ARGS]     # the main job: `corral demo` on an embedded NATS server
    python3 dev.py test [ARGS]     # ruff + mypy --strict + the whole pytest suite (ARGS go to pytest);
                                   # first installs the system packages the tests need (NEEDS) when it
                                   # can (root or passwordless sudo, apt-get; CORRAL_DEV_INSTALL=0: never),
                                   # otherwise says in one line what is missing, the command that
                                   # installs it, and which tests are left out (with CI=true: exit 1);
                                   # with npm, `npm install`s clients/typescript-worker (its package.json)
    python3 dev.py bench peers [--tasks N --rounds R --latency N --systems a,b --json FILE]
                                   # corral side by side with saq, dramatiq, streaq, Celery, arq,
                                   # taskiq-nats and raw nats-py (installs the `bench` extra;
                                   # redis-server from the system: says so when it is missing)
    python3 dev.py bench clients [--quick --seconds S --json FILE]
                                   # nats-py vs nats-core + nats-jetstream on corral's hot path
                                   # (builds a Python 3.13 venv in ./.venv-clients313)
    python3 dev.py bench fanout [--parents 1,4,16,32 --agents 1000,10000 --rate R --seconds S
                                 --reclaimer standalone|embedded --json FILE]
                                   # what each parent, the reclaimer and the server pay as parents
                                   # and agents grow at a fixed total task rate (issue 22)
    python3 dev.py corral ARGS     # any other corral command inside the project's virtualenv

The virtualenv lives in ./.venv and is (re)installed whenever pyproject.toml changes (or when a
command needs an extra that is not installed yet).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("CORRAL_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".corral-install-stamp"


def say(msg: str) -> None:
    print(f"[dev.py] {msg}", file=sys.stderr, flush=True)


def ensure_venv(extras: tuple[str, ...] = ("dev",)) -> None:
    """Create .venv and install corral with ``extras`` unless the stamp says that is already done.

    The stamp holds the hash of pyproject.toml and the extras installed with it; extras installed
    earlier are kept when pyproject.toml changes.
    """
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 the user has
        sys.exit(f"corral needs Python 3.11+, this is {sys.version.split()[0]}")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = STAMP.read_text().split() if STAMP.exists() else []
    have = set(stamp[1].split(",")) if len(stamp) > 1 else {"dev"} if stamp else set()
    if stamp and stamp[0] == want and set(extras) <= have and PY.exists():
        return
    if not PY.exists():
        say(f"creating virtualenv in {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        have = set()
    wanted = sorted(have | set(extras))
    say(f"installing corral with {'+'.join(wanted)} (first run only; takes a minute)")
    pip = [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[{','.join(wanted)}]"], check=True)
    STAMP.write_text(f"{want}\n{','.join(wanted)}\n")


def run(argv: list[str]) -> int:
    return subprocess.call(argv, cwd=ROOT)


@dataclass(frozen=True)
class Need:
    """A system command some tests need, the Debian/Ubuntu package that has it, the tests it serves."""

    command: str
    package: str
    tests: tuple[str, ...]
    """Test files left out when it is missing (empty: those tests skip themselves, saying why)."""


TS_WORKER = ROOT / "clients" / "typescript-worker"
NODE_TESTS = ("tests/corral/test_conformance_typescript.py", "tests/chaos/test_any_language.py")
"""The tests that run the TypeScript worker."""

NEEDS = (
    Need("ip", "iproute2", ()),  # tests/chaos/test_partition.py (network namespaces; skips without root or ip)
    Need("openssl", "openssl", ("tests/coord/test_connection_security.py",)),  # a CA and server certificates
    Need("chromium", "chromium", ("tests/corral/test_ui.py",)),  # the dashboard in a real headless browser ...
    Need("chromedriver", "chromium-driver", ("tests/corral/test_ui.py",)),  # ... driven through Debian's driver
    Need("node", "nodejs", NODE_TESTS),  # the TypeScript worker (clients/typescript-worker) ...
    Need("npm", "npm", NODE_TESTS),  # ... installed from the npm registry by its package.json
    Need("redis-server", "redis-server", ("tests/bench/test_peers_redis.py",)),  # the Redis-based peers (saq, ...)
)
"""The one list of system packages the tests need (.ci/run installs them through ``dev.py test``)."""


def missing(have: Callable[[str], object] = shutil.which) -> list[Need]:
    """The needs whose command ``have`` does not find (by default: not on PATH)."""
    return [need for need in NEEDS if not have(need.command)]


def installer(*, root: bool, sudo: bool, apt: bool) -> list[str] | None:
    """How to run apt-get here: as root, through passwordless sudo, or None (cannot install)."""
    if not apt:
        return None
    if root:
        return ["apt-get"]
    if sudo:
        return ["sudo", "-n", "apt-get"]
    return None


def verdict(absent: Sequence[Need], *, ci: bool) -> tuple[str | None, list[str], bool]:
    """What ``dev.py test`` does about ``absent`` needs: (the one line it says, pytest args, stop?).

    Outside CI the tests that need them are left out (``--ignore``) and the line names the packages,
    the command that installs them and the tests left out; in CI (``CI=true``) nothing is left out:
    the line names the packages and the run stops (exit 1), since a missing browser is a failure there.
    """
    if not absent:
        return None, [], False
    packages = sorted({need.package for need in absent})
    command = f"sudo apt-get install -y {' '.join(packages)}"
    files = sorted({test for need in absent for test in need.tests})
    if ci:
        return f"missing system packages {', '.join(packages)} in CI; install them: {command}", [], True
    left_out = f"leaving out {', '.join(files)}" if files else "the tests that need them skip"
    return (
        f"missing system packages {', '.join(packages)}: {left_out}; to run everything: {command}",
        [f"--ignore={test}" for test in files],
        False,
    )


def _can_sudo() -> bool:
    if shutil.which("sudo") is None:
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0


def install(absent: Sequence[Need]) -> None:
    """Install ``absent`` with apt-get when this user can (root or passwordless sudo) and may
    (``CORRAL_DEV_INSTALL`` is not ``0``); failures are left to :func:`verdict`'s line."""
    if not absent or os.environ.get("CORRAL_DEV_INSTALL", "1") == "0":
        return
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    apt = installer(root=root, sudo=not root and _can_sudo(), apt=shutil.which("apt-get") is not None)
    if apt is None:
        return
    packages = sorted({need.package for need in absent})
    say(f"installing {' '.join(packages)} (system packages the tests need)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["update", "-qq"], ["install", "-y", "-qq", "--no-install-recommends", *packages]):
        if subprocess.run([*apt, *step], stdin=subprocess.DEVNULL, env=env, check=False).returncode != 0:
            return


def test(args: list[str]) -> int:
    absent = missing()
    install(absent)
    line, extra, stop = verdict(missing(), ci=os.environ.get("CI", "").lower() in ("true", "1"))
    if line:
        say(line)
    if stop:
        return 1
    steps = []
    npm = shutil.which("npm")
    if npm is not None:  # the TypeScript worker's packages (exact versions, no lock file), compiled by `prepare`
        steps.append(("npm install (clients/typescript-worker)", [npm, "install", "--prefix", str(TS_WORKER)]))
    steps += [
        ("ruff", [str(BIN / "ruff"), "check", "coord", "dispatch", "workers", "corral", "tests", "bench", "dev.py"]),
        ("mypy --strict", [str(BIN / "mypy")]),
        ("pytest", [str(BIN / "pytest"), *extra, *args]),
    ]
    for name, argv in steps:
        say(f"running {name}")
        code = run(argv)
        if code != 0:
            say(f"{name} failed (exit {code})")
            return code
    return 0


BENCHES = {"peers": "bench.peers", "clients": "bench.clients", "fanout": "bench.fanout"}
"""`dev.py bench NAME` → the module run with the venv's python from the repository root."""


def bench(args: list[str]) -> int:
    if not args or args[0] not in BENCHES:
        print(f"usage: python3 dev.py bench {{{','.join(BENCHES)}}} [ARGS] (ARGS: --help)", file=sys.stderr)
        return 2
    ensure_venv(("dev", "bench"))
    if args[0] == "peers" and shutil.which("redis-server") is None:
        say("redis-server not found: the Redis-based peers will be rows saying so; sudo apt-get install redis-server")
    return run([str(PY), "-m", BENCHES[args[0]], *args[1:]])


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in {"-h", "--help"}:
        print(__doc__)
        return 0 if len(sys.argv) >= 2 else 2
    command, args = sys.argv[1], sys.argv[2:]
    if command == "bench":
        return bench(args)
    ensure_venv()
    if command == "test":
        return test(args)
    if command == "demo":
        return run([str(BIN / "corral"), "demo", *args])
    if command == "corral":
        return run([str(BIN / "corral"), *args])
    print(f"unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

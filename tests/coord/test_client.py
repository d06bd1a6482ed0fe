"""corral's nats-py client: the faster header parser answers exactly as nats-py's own, also on the wire."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

import coord
from coord.client import CorralClient, parse_header_lines

ODD_BLOCKS = [
    b"",
    b"\r\n",
    b"Nats-Sequence: 12\r\nNats-Subject: $KV.x.t1\r\n\r\n",
    b"Name:Value\r\nOther:\tspaced \r\n",
    b"no colon here\r\nKey: v\r\n",
    b"Bad Key: v\r\nGood-Key: v2\r\n",
    b"Tab\tKey: v\r\n",
    b"Unit\x1fSep: v\r\nRec\x1eSep: w\r\nFile\x1cSep: y\r\n",
    b"Vt\x0bKey: v\r\nFf\x0cKey: v\r\n",
    b"  Padded  : value with: colons \r\n",
    b"K\xc3\xa9y: non-ascii name\r\n",
    b"Key: caf\xc3\xa9 and bad \xff utf8\r\n",
    b"Dup: 1\r\nDup: 2\r\n",
    b":empty name\r\n",
    b"Empty-Value:\r\n",
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\nCorral-Index: p|q|w\r\n",
    b"Bare\rCR: v\nLF: w\r\n",
]


@pytest.mark.parametrize("raw", ODD_BLOCKS)
def test_header_parser_answers_as_nats_py_does(raw: bytes) -> None:
    assert parse_header_lines(raw) == NATS._parse_header_lines(raw)


async def test_connections_use_the_fast_parser_and_headers_arrive_intact(coord_conn: coord.Coord) -> None:
    nc = coord_conn.nc
    assert isinstance(nc, CorralClient)
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    sent = {"Corral-Index": "pending|q|", "traceparent": "00-ab-cd-01", "Caf": "caf\u00e9"}
    await nc.publish(inbox, b"x", headers=sent)
    msg = await asyncio.wait_for(sub.next_msg(), 5)
    assert msg.headers == sent
    await sub.unsubscribe()

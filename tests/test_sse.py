"""The SSE line parser every streaming backend reads its upstream through (`proxy.backends.base.sse_data`):
LF, CRLF and bare-CR line endings (the SSE spec allows all three), split anywhere between reads."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from proxy.backends.base import sse_data


class Body:
    """What sse_data reads: a response whose body arrives in the given pieces."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            yield p


def payloads(pieces: list[bytes]) -> list[bytes]:
    async def go() -> list[bytes]:
        return [p async for p in sse_data(Body(pieces))]

    return asyncio.run(go())


STREAM = (b": keep-alive\n"
          b"event: message\nid: 1\ndata: {\"a\": 1}\n\n"
          b"data:{\"b\": 2}\n\n"            # no space after the colon
          b"data: line one\ndata: line two\n\n"  # one payload over two data lines
          b"retry: 100\n\n"                 # an event with no data: nothing
          b"data: [DONE]\n\n")
EXPECTED = [b'{"a": 1}', b'{"b": 2}', b"line one\nline two", b"[DONE]"]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_every_line_ending_gives_the_same_payloads(ending: bytes) -> None:
    assert payloads([STREAM.replace(b"\n", ending)]) == EXPECTED


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_split_at_every_byte(ending: bytes) -> None:
    body = STREAM.replace(b"\n", ending)
    for i in range(1, len(body)):  # bounded: one split per position of a ~140-byte stream
        assert payloads([body[:i], body[i:]]) == EXPECTED, f"split at {i}: {body[:i]!r} | {body[i:]!r}"


def test_byte_by_byte_with_mixed_endings() -> None:
    body = b"data: one\r\n\r\ndata: two\r\rdata: three\n\ndata: four\r\n\n"
    got = payloads([body[i:i + 1] for i in range(len(body))])
    assert got == [b"one", b"two", b"three", b"four"]


def test_a_last_event_without_its_blank_line_is_still_delivered() -> None:
    assert payloads([b"data: a\n\ndata: b\n"]) == [b"a", b"b"]


def test_an_empty_body_gives_nothing() -> None:
    assert payloads([]) == [] and payloads([b": only a comment\n\n"]) == []

"""uvicorn's httptools protocol with a read deadline per request (against slowloris).

uvicorn bounds the idle time between requests on a kept-alive connection, but not the time a
client takes to send a request's headers and body: a client trickling one byte a second holds a
connection (and, in the app, a body read) forever. Here every request — from the connection's
first byte, or the next request's first byte — must arrive whole within `read_timeout` seconds
(``server.read_timeout``, default 30); otherwise the client gets a 408 in OpenAI's error shape (if
nothing was answered yet) and the connection is closed. Use it as uvicorn's ``http`` class:
``proxy.server.protocol:BoundedReadProtocol``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_BODY = orjson.dumps({"error": {"message": "The request was not received in time.", "type": "invalid_request_error",
                                "param": None, "code": "request_timeout"}})
_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"x-should-retry: false\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class BoundedReadProtocol(HttpToolsProtocol):
    read_timeout: float = 30.0  # set from server.read_timeout by `turnout serve` / the worker factory

    _read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_408)
        self.transport.close()

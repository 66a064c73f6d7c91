"""Fetch http(s) image URLs for providers that only take inline bytes (Gemini, Ollama).

A client-supplied URL makes Turnout open a connection, so every fetch is fenced: http/https only,
a size cap, a timeout, at most a few redirects (each hop checked again) and no private, loopback,
link-local or otherwise internal address unless the operator allows it (no SSRF). The host is
resolved once per hop and the connection goes to the address that was checked (the Host header and
TLS SNI keep the name), so a DNS answer that changes between check and connect (rebinding) cannot
redirect the fetch inside.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import urljoin, urlsplit

from proxy.errors import TransportError
from proxy.http import HTTPClient
from translators.common import TranslationError


@dataclass
class ImagePolicy:
    max_bytes: int = 20 * 1024 * 1024
    timeout: float = 10.0
    allow_private: bool = False  # allow loopback / private addresses (tests, on-prem image stores)
    max_redirects: int = 3

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "ImagePolicy":
        d = options.get("images") or {}
        p = cls()
        for k in ("max_bytes", "timeout", "allow_private", "max_redirects"):
            if k in d:
                setattr(p, k, type(getattr(p, k))(d[k]))
        return p


def _blocked(ip: str) -> bool:
    a = ipaddress.ip_address(ip)
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:
        a = a.ipv4_mapped
    return not a.is_global or a.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


class ImageFetcher:
    """One pooled client for image downloads, created once per backend that needs it."""

    def __init__(self, policy: ImagePolicy | None = None,
                 resolver: Callable[[str, int], Awaitable[list[str]]] = resolve) -> None:
        self.policy = policy or ImagePolicy()
        self.resolve = resolver
        self.client = HTTPClient(timeout=self.policy.timeout)  # absolute URLs; redirects followed here, each checked

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _pin(self, url: str) -> tuple[str, dict[str, str], str | None]:
        """The URL to connect to (the checked address in place of the name), its Host header and the
        TLS server name (the name): one resolution, used for the check and the connect."""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            raise TranslationError("Image URLs must be valid http or https URLs.", param="messages",
                                   code="invalid_image_url") from None
        if parts.scheme not in ("http", "https") or not host:
            raise TranslationError("Image URLs must be http or https.", param="messages", code="invalid_image_url")
        if self.policy.allow_private:
            return url, {}, None
        try:
            addresses = await self.resolve(host, port or (443 if parts.scheme == "https" else 80))
        except (OSError, UnicodeError):
            addresses = []
        if not addresses:
            raise TranslationError(f"Could not resolve the image host '{host}'.", param="messages",
                                   code="invalid_image_url")
        if any(_blocked(a) for a in addresses):
            raise TranslationError(f"Image URL host '{host}' is not a public address.",
                                   param="messages", code="invalid_image_url")
        ip = addresses[0]
        netloc = parts.netloc.rpartition("@")[2]
        pinned = parts._replace(netloc=(f"[{ip}]" if ":" in ip else ip) + (f":{port}" if port else "")).geturl()
        return pinned, {"host": netloc}, host if parts.scheme == "https" else None

    async def fetch(self, url: str) -> tuple[str, bytes]:
        """(media type, bytes) of an image URL, within the policy's limits; each redirect hop is
        resolved, checked and pinned again."""
        for _ in range(self.policy.max_redirects + 1):
            try:
                pinned, headers, server_name = await self._pin(url)
                async with self.client.stream("GET", pinned, headers=headers, server_hostname=server_name) as r:
                    if r.is_redirect:
                        url = urljoin(url, r.headers["location"])
                        continue
                    if r.status_code != 200:
                        raise TranslationError(f"Could not fetch the image (HTTP {r.status_code}).",
                                               param="messages", code="invalid_image_url")
                    declared = r.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.policy.max_bytes:
                        raise self._too_big()
                    data = bytearray()
                    async for part in r.aiter_bytes():
                        data += part
                        if len(data) > self.policy.max_bytes:
                            raise self._too_big()
                    media_type = r.headers.get("content-type", "").split(";")[0].strip() or _sniff(bytes(data))
                    return media_type, bytes(data)
            except TranslationError:
                raise
            except (TransportError, ValueError) as e:  # ValueError: a URL aiohttp cannot use
                raise TranslationError(f"Could not fetch the image ({type(e).__name__}).", param="messages",
                                       code="invalid_image_url") from None
        raise TranslationError("Too many redirects fetching the image.", param="messages", code="invalid_image_url")

    def _too_big(self) -> TranslationError:
        return TranslationError(f"The image is larger than {self.policy.max_bytes} bytes.", param="messages",
                                code="image_too_large")


def _sniff(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"

"""The provider contract's static half: one `ProviderSpec` per backend `type`, and the one rule for "local".

Everything that depends on a backend's type and not on a running backend is read from here: the
type names config accepts, the default base URL, whether a key is needed, whether it runs on this
machine, whether its models read images by default, and the schema of its own options (the keys
of a backend in proxy.yaml besides the common ones: `backends.gem.api_version`, `backends.local.n_ctx`).
Config validates those options against the spec's Struct at load, so a typo is an error at start
with its path (``backends.gem.imagez: unknown field; did you mean images?``), not a key silently
ignored. Prices, metrics, health, the CLI and the backends read the spec instead of keeping lists.

Imports nothing from `proxy` but the config schema, so every layer may import it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from msgspec import Meta

from proxy.config.schema import BackendConfig, Count, NonNeg, Positive, Section, Text


# --- each type's own options ---------------------------------------------------------------------


class ImageOptions(Section):
    """`images:` — how the backend fetches http(s) image URLs it must inline (Gemini, Ollama)."""

    max_bytes: Count = 20 * 1024 * 1024
    timeout: Positive = 10.0
    allow_private: bool = False  # allow loopback / private addresses (tests, on-prem image stores)
    max_redirects: Annotated[int, Meta(ge=0)] = 3


class NoOptions(Section):
    """A type with no options of its own (`openai`: everything is in the common fields)."""


class MockFailure(Section):
    """`fail:` of a mock backend: a fault before the answer, or a dropped stream."""

    status: int | None = None  # fail with this HTTP status
    message: str = "mock failure"
    drop: Annotated[int, Meta(ge=0)] | None = None  # drop a stream after this many chunks
    hang: bool = False  # never answer
    times: Annotated[int, Meta(ge=0)] | None = None  # only the first N requests fail
    retry_after: NonNeg | None = None


class MockOptions(Section):
    """`type: mock` (proxy.mock.engine.Script)."""

    latency: NonNeg | None = None  # seconds before the first byte
    chunk_delay: NonNeg | None = None  # seconds between streamed chunks
    retry_after: NonNeg | None = None  # the retry-after of its faults
    fail: MockFailure | None = None
    reply: str | None = None  # the reply template
    chunks: Count | None = None  # pad the reply to this many streamed content chunks
    force_reply: bool = False  # answer with the template even when JSON or a tool call was asked
    directives: bool = True  # obey [mock:…] directives in messages
    tool_arguments: str | None = None  # send these (possibly broken) arguments in tool calls


class Thinking(Section):
    type: Literal["enabled", "adaptive", "disabled"] = "enabled"
    budget_tokens: Count | None = None


class AnthropicOptions(Section):
    """`type: anthropic` (translators.anthropic.to_request); a target's `options` override them."""

    max_tokens: Count | None = None  # the default when the client sends none
    thinking: Count | Literal["adaptive"] | Thinking | None = None  # extended thinking for every request
    sampling: bool | None = None  # whether temperature / top_p may be sent (default: by model)
    cache_control: dict[str, Any] | None = None  # automatic prompt caching, e.g. {type: ephemeral}


class GeminiOptions(Section):
    """`type: gemini`; include_thoughts and thought_signature_fallback may also be set per target."""

    api_version: Text = "v1beta"  # the path prefix, unless base_url already ends in a version
    images: ImageOptions | None = None
    include_thoughts: bool = False  # ask for thought summaries → reasoning_content
    thought_signature_fallback: str | None = None  # the signature sent back for a tool call that had none


class OllamaOptions(Section):
    """`type: ollama` (translators.ollama.to_request); a target's `options` override them."""

    num_ctx: Count | None = None  # the context length the model is loaded with
    keep_alive: str | int | None = None  # "30m", -1 = keep loaded, 0 = unload after
    images: ImageOptions | None = None


class SemanticOptions(Section):
    """`type: semantic`: the local embedding engine of the semantic extra (proxy/semantic/engine.py)."""

    max_tokens: Annotated[int, Meta(ge=8)] = 512  # longer inputs are embedded by their head and tail


class LlamacppOptions(Section):
    """`type: llamacpp`: the llama.cpp server Turnout starts and supervises (docs/local-models.md)."""

    model_path: Text  # a GGUF file, or a cached model name (`turnout models fetch`)
    n_ctx: Annotated[int, Meta(ge=256)] = 4096
    threads: Count | None = None  # default: the CPU count, at most 8
    parallel: Count = 1
    concurrency: Count | None = None  # requests open to the server at once (default: max(16, parallel))
    startup_timeout: Annotated[float, Meta(ge=1)] = 120.0
    restart: bool = True
    restart_backoff: Annotated[float, Meta(ge=0.01)] = 1.0
    restart_backoff_max: Annotated[float, Meta(ge=0.01)] = 30.0
    health_interval: Annotated[float, Meta(ge=0.1)] = 5.0
    log_file: Text | None = None
    verbose: bool = False
    alias: Text | None = None  # the model name the server answers to
    embedding: bool = False  # serve /v1/embeddings too (llama.cpp's --embedding mode)
    pooling: Literal["mean", "cls", "last"] | None = None  # how token vectors become one; default: the model's


# --- the specs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderSpec:
    type: str
    base_url: str | None  # the default; None: no HTTP upstream of its own (mock) or its own child (llamacpp)
    key: Literal["required", "optional", "none"]  # optional: a local OpenAI-compatible server needs none
    local: bool  # runs on this machine: costs nothing unless priced
    vision: bool  # its models read images unless a target says otherwise
    options: type[Section]
    kinds: tuple[str, ...] = ("chat", "embedding")  # what its targets may serve (`models.x.kind`)
    logprobs: bool = False  # its chat answers can carry token log probabilities (`logprobs: true`)


SPECS: dict[str, ProviderSpec] = {s.type: s for s in (
    ProviderSpec("mock", None, "none", True, False, MockOptions),
    ProviderSpec("openai", "https://api.openai.com/v1", "optional", False, False, NoOptions, logprobs=True),
    # every current Claude and Gemini model reads images; elsewhere it varies, so it must be declared
    ProviderSpec("anthropic", "https://api.anthropic.com", "required", False, True, AnthropicOptions),
    ProviderSpec("gemini", "https://generativelanguage.googleapis.com", "required", False, True, GeminiOptions,
                 logprobs=True),
    ProviderSpec("ollama", "http://localhost:11434", "none", True, False, OllamaOptions, logprobs=True),
    ProviderSpec("llamacpp", None, "none", True, False, LlamacppOptions, logprobs=True),
    # the in-process embedding engine: no HTTP, no key, embeddings only
    ProviderSpec("semantic", None, "none", True, False, SemanticOptions, kinds=("embedding",)),
)}


# --- the one rule for "local" --------------------------------------------------------------------

LOCAL_NAMES = ("localhost", "host.docker.internal")
LOCAL_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "0.0.0.0/32",
    "::1/128", "fc00::/7", "fe80::/10"))


def local_host(url: str | None) -> bool:
    """Whether a URL's host is this machine or the local network: loopback, RFC 1918 (10/8,
    172.16/12, 192.168/16), link-local, IPv6 unique-local (fc00::/7), or a local name."""
    host = (urlsplit(url or "").hostname or "").lower()
    if host in LOCAL_NAMES or host.endswith((".localhost", ".local")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return any(ip in n for n in LOCAL_NETWORKS if n.version == ip.version)


def is_local(backend: BackendConfig) -> bool:
    """A backend is local when its type is (ollama, llamacpp, mock) or its base_url's host is."""
    return SPECS[backend.type].local or local_host(backend.base_url)

"""Front doors other than OpenAI chat: each module turns one client-facing API (Anthropic's Messages,
the Responses API, legacy completions, chat dialects) into an OpenAI chat body, and the pipeline's chat
answer (a completion or chat-chunk payloads) back into that API's shapes. Pure: plain dicts and bytes,
no I/O."""

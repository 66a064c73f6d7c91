"""Pure translation between the OpenAI wire format and each provider's: plain dicts in and out, no I/O."""

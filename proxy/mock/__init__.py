"""The built-in mock provider: deterministic, scriptable answers with no network and no keys.

Owns: `engine` (replies, tool calls, JSON modes, fault directives), `server` (the same mock as an
OpenAI-compatible HTTP upstream for `turnout mock-upstream` and the benchmarks).
"""

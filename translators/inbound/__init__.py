"""Inbound translators: other APIs' request shapes → Turnout's OpenAI chat body, and OpenAI answers
back into those APIs' shapes (Anthropic's Messages API today). Pure: plain dicts and bytes, no I/O."""

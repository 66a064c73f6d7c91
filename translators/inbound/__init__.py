"""Front doors other than OpenAI chat: each module turns one client-facing API into an OpenAI chat body
and the pipeline's chat answer (a completion or chat-chunk payloads) back into that API's shapes."""

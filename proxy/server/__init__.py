"""The HTTP server: the one assembly point, the shared chat pipeline, and OpenAI's front door.

Owns: `assembly` (`build`: config → running `Gateway`, every part wired in one function;
`build_app` / `create_app`: the Starlette app), `pipeline` (`Pipeline.run`: gates → route →
dispatch, for every front door; `finish` tells the observers), `app` (OpenAI's chat completions,
models, health, ready, route), `validate` (OpenAI request checks with OpenAI's wording).
"""

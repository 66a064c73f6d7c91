"""The HTTP surface: the Starlette app, request validation, responses, and the one assembly point.

Owns: `assembly.build` (config → running gateway, wired explicitly), `app` (the request handlers:
read and check a body, authenticate, route, dispatch, answer as OpenAI would), `validate` (OpenAI
request checks with OpenAI's error wording). Exports `build_app` and `create_app`.
"""

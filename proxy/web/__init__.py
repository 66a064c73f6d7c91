"""What every HTTP endpoint shares, below the server and the API modules: reading bodies with a
size limit and a depth bound, JSON and error responses (with `x-should-retry`), request ids,
proxy-key authentication, the browser guard (CSRF, DNS rebinding, CORS) and cancellation when the
client leaves.

Exports: `responses` (`read_json`, `parse_json`, `json_response`, `error_response`, `should_retry`,
`request_id`), `auth` (`Authenticator`), `browser` (`BrowserGuard`), `disconnect` (`unless_client_leaves`).
"""

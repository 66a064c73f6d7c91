"""What every HTTP endpoint shares, below the server and the API modules: reading bodies with a
size limit, JSON and error responses, request ids, and proxy-key authentication.

Exports: `responses` (`read_json`, `json_response`, `error_response`, `request_id`) and
`auth` (`Authenticator`).
"""

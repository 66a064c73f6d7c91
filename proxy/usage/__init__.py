"""What requests cost and what is allowed: the ledger, quotas, budgets, rate limits, prices.

Owns: `ledger` (durable per-request rows, written off the request path), `quota` (quota, budget
and rate-limit accounts and their gates and filters), `prices` (the built-in price table),
`pricing` (cost of one usage), `tokens` (tiktoken counts and bounds), `api` (/turnout/usage),
`cli` (`turnout usage`, `turnout simulate`), `simulate` (replays and traffic mixes).
"""

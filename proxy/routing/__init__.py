"""Where a request goes: features, the complexity heuristic, rules, filters, dispatch along a chain.

Owns: `features` (what a request looks like), `complexity` (the keyword heuristic), `router` (rules
→ chain, filters with skip reasons, overrides), `dispatch` (retries, fallback, escalation),
`quality` (weak-answer checks), `circuit` (per-backend breakers), `explain` (dry-run decisions).
Exports `Router`, `Dispatcher`, `Features`.
"""

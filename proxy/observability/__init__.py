"""What operators see: Prometheus metrics, provider health, recent stats, logs, the dashboard.

Owns: `metrics` (the Prometheus registry and the request observer), `health` (probes and passive
health per backend), `stats` (the dashboard's recent windows), `logs` (access-log lines, JSON or
text), `api` (/metrics, /turnout/providers, provider tests, the dashboard), `dashboard/` (static).
"""

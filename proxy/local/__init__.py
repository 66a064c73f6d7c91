"""Local models on this machine: the GGUF model cache, llama.cpp supervision, `turnout doctor`,
and local models that configure themselves.

Owns: `models` (fetching and verifying known GGUF files), `llamacpp_server` (the supervised child
process), `doctor` (what Ollama serves, which local models fit), `hardware` (GPUs or CPU-only and
their memory), `recommend` (the model catalogue and the choice for a memory budget), `autoconfig`
(the survey, `doctor --json` / `--write`, `model: auto` targets), `api` (``GET /turnout/hardware``).
"""

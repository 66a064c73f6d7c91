"""Local models on this machine: the GGUF model cache, llama.cpp supervision, `turnout doctor`.

Owns: `models` (fetching and verifying known GGUF files), `llamacpp_server` (the supervised child
process), `doctor` (what Ollama serves, the GPU, which local models fit).
"""

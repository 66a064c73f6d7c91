#!/bin/bash
# Turnout beside LiteLLM's proxy in the same run, both in front of the same mock upstream, driven by wrk.
# Needs wrk and a separate venv with LiteLLM:  python3 -m venv /tmp/ll-venv && /tmp/ll-venv/bin/pip install 'litellm[proxy]'
#   LITELLM=/tmp/ll-venv/bin/litellm unshare -n benchmarks/litellm_compare.sh
# `unshare -n` runs it in a network namespace with only loopback, so nothing can leave the machine.
set -u
cd "$(dirname "$0")/.."
LITELLM=${LITELLM:-litellm}
PY=${PYTHON:-python3}
W=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
ip link set lo up 2>/dev/null || true
KEY=sk-bench-master-key-0123456789
cat > "$W/ll.yaml" <<EOT
model_list:
  - model_name: bench
    litellm_params: {model: openai/bench, api_base: "http://127.0.0.1:4700/v1", api_key: x}
litellm_settings: {telemetry: false}
EOT
cat > "$W/tp.yaml" <<EOT
server: {host: 127.0.0.1, port: 4701, log_level: warning}
backends: {upstream: {type: openai, base_url: "http://127.0.0.1:4700/v1"}}
models: {bench: {backend: upstream, model: bench}}
usage: {ledger: "$W/usage.sqlite"}
EOT
cat > "$W/post.lua" <<EOT
wrk.method = "POST"
wrk.body = '{"model": "bench", "messages": [{"role": "user", "content": "Say hello to the benchmark"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
EOT
CLK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
$PY -m proxy mock-upstream --port 4700 >/dev/null 2>&1 &
$PY -m proxy serve --config "$W/tp.yaml" >/dev/null 2>&1 &
TP=$!
LITELLM_MASTER_KEY=$KEY LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False \
  "$LITELLM" --config "$W/ll.yaml" --port 4702 --num_workers 1 > "$W/ll.log" 2>&1 &
for _ in $(seq 1 120); do curl -s -o /dev/null http://127.0.0.1:4702/health/liveliness && break; sleep 1; done
sleep 2
LL=$(pgrep -f "ll.yaml --port 4702" | head -1)
for name in litellm turnout; do
  if [ $name = litellm ]; then port=4702; pid=$LL; else port=4701; pid=$TP; fi
  wrk -t1 -c32 -d3s -s "$W/post.lua" "http://127.0.0.1:$port/v1/chat/completions" > /dev/null
  c0=$(cpu "$pid")
  out=$(wrk -t1 -c32 -d10s -s "$W/post.lua" "http://127.0.0.1:$port/v1/chat/completions")
  c1=$(cpu "$pid")
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  printf '%-8s %8s req/s  %6.3f ms CPU/request  RSS %4d MB  %s\n' "$name" \
    "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" "$(echo "($c1-$c0)*1000/$CLK/$n" | bc -l)" \
    "$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status")" "$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)"
done

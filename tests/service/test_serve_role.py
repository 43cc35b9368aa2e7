"""Role ``serve`` in process: a read-only replica never primes, cancels or clears the store."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from batchstash.client import BatchClient, NotPrimedError
from batchstash.service import cli
from batchstash.service.api import create_app
from batchstash.service.api.datapath import DataListener
from batchstash.service.config import build_settings
from batchstash.service.examples import iris
from batchstash.service.store import layout
from batchstash.service.store.backend import open_backend
from batchstash.service.store.lease import read_job

TOKEN = "t0ken"
APP_LOGGER = "batchstash.service.api.app"


class AppTransport(httpx.BaseTransport):
    """Sends a ``BatchClient``'s requests to an in-process app through its ``TestClient``.

    Starlette's test client is built on ``httpx2`` where that is installed (as
    ``huggingface_hub``, through ``accelerate``, installs it), and its transport then speaks
    another httpx than the client's: this adapter copies requests and answers across.
    """

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.client.request(
            request.method, str(request.url), headers=dict(request.headers), content=request.read()
        )
        return httpx.Response(
            answer.status_code, headers=list(answer.headers.multi_items()), content=answer.content
        )


def replica(store: Path, **settings: Any) -> TestClient:
    """A role-serve app over ``store``, with no token unless one is given."""
    return TestClient(create_app(build_settings(data_dir=store, role="serve", **settings)))


@pytest.fixture
def primed(tmp_path: Path) -> Path:
    """A store primed by a stash with the dataset, as a server with role all would."""
    store = tmp_path / "store"
    iris(path=str(store)).prime()
    return store


def files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in store.rglob("*") if p.is_file()}


def refusal(response: Any, *words: str) -> str:
    """The message of a ``409 conflict`` in the JSON error shape, checked for ``words``."""
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "conflict"
    for word in ("role serve", "read-only", *words):
        assert word in error["message"], (word, error["message"])
    return str(error["message"])


def test_a_replica_refuses_to_clear_and_keeps_serving(primed: Path) -> None:
    before = files(primed)
    with replica(primed) as client:
        refusal(client.post("/v1/admin/clear"), "role all", "batchstash clear --url")
        assert files(primed) == before  # not a batch, record or job file changed
        assert client.get("/v1/splits").json()["primed"] is True
        for batch_id in range(6):
            assert client.get(f"/v1/splits/train/batches/{batch_id}").status_code == 200
        assert client.get("/v1/admin/status").json()["role"] == "serve"  # reads stay open


def test_a_replica_refuses_to_prime_or_cancel_when_nothing_primes(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with replica(store) as client:
        refusal(client.post("/v1/admin/prime"), "role all", "--role prime")
        refusal(client.delete("/v1/admin/prime"), "role all", "prime job")
        assert client.get("/v1/admin/status").json()["state"] == "idle"
    assert read_job(open_backend(str(store)))[0] is None  # no job was written


def test_a_replica_joins_a_running_prime_but_never_cancels_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    primer = iris(path=str(store))
    lease = primer.acquire_lease("prime")  # a prime elsewhere holds the store's lease
    try:
        with replica(store) as client:
            joined = client.post("/v1/admin/prime")
            assert joined.status_code == 202 and joined.json()["joined"] is True
            refusal(client.delete("/v1/admin/prime"), "batchstash cancel --url")
            refusal(client.post("/v1/admin/clear"))
        record, _ = read_job(primer.backend)
        assert record is not None and record.job_id == lease.job_id
        assert record.holds_lease() and not record.cancel_requested
    finally:
        lease.finish("cancelled")


def test_a_token_is_checked_before_the_role(primed: Path) -> None:
    with replica(primed, token=TOKEN) as client:
        assert client.post("/v1/admin/clear").status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        refusal(client.post("/v1/admin/clear", headers=auth))
    assert (primed / layout.MANIFEST).is_file()


@pytest.mark.parametrize(
    ("command", "words"),
    [("clear", "role all"), ("prime", "--role prime"), ("cancel", "role all")],
)
def test_the_cli_shows_the_refusal_in_one_line_and_fails(
    primed: Path, monkeypatch: pytest.MonkeyPatch, command: str, words: str
) -> None:
    with replica(primed) as client:
        monkeypatch.setattr(
            cli,
            "_client",
            lambda url, token: BatchClient(url, transport=AppTransport(client), retries=0),
        )
        result = CliRunner().invoke(cli.app, [command, "--url", "http://replica.test"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "this server has role serve" in lines[0]
    assert words in lines[0] and lines[0].endswith("(conflict)")
    assert (primed / layout.MANIFEST).is_file()


def test_a_trainer_of_an_unprimed_replica_is_told_who_primes(tmp_path: Path) -> None:
    with replica(tmp_path / "store") as client:
        response = client.get("/v1/splits/train/batches/0")
        assert response.status_code == 503
        progress = json.loads(response.headers["x-batchstash-prime"])
        assert progress == {"state": "idle", "done": 0, "total": 0, "role": "serve"}
        state = client.app.state.batchstash  # type: ignore[attr-defined]
        with DataListener(state, "127.0.0.1", 0) as listener:  # the data port says the same
            data = httpx.get(f"http://127.0.0.1:{listener.port}/v1/splits/train/batches/0")
        assert data.status_code == 503
        assert json.loads(data.headers["x-batchstash-prime"])["role"] == "serve"
        url = "http://replica.test"
        with BatchClient(url, transport=AppTransport(client), retries=0) as trainer:
            with pytest.raises(NotPrimedError) as info:
                trainer.batch("train", 0)
    message = info.value.message
    assert f"--url {url}`" not in message  # never: prime this replica
    assert "the store is not primed yet" in message
    assert "a server with role all" in message and "the prime job" in message


def test_a_trainer_of_a_server_with_the_dataset_is_told_to_prime_it(tmp_path: Path) -> None:
    settings = build_settings(data_dir=tmp_path / "store", workers=0)
    with TestClient(create_app(settings)) as client:
        progress = json.loads(
            client.get("/v1/splits/train/batches/0").headers["x-batchstash-prime"]
        )
        assert progress["role"] == "all"
        url = "http://primer.test"
        with BatchClient(url, transport=AppTransport(client), retries=0) as trainer:
            with pytest.raises(NotPrimedError, match=f"run `batchstash prime --url {url}`"):
                trainer.batch("train", 0)


def open_admin_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == APP_LOGGER and r.levelno == logging.WARNING and "no token" in r.getMessage()
    ]


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({"role": "all"}, True),
        ({"role": "all", "token": TOKEN}, False),
        ({"role": "serve"}, False),  # its admin routes never change the store
    ],
    ids=["all-no-token", "all-token", "serve-no-token"],
)
def test_open_admin_routes_are_warned_about_once_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, settings: dict[str, Any], warned: bool
) -> None:
    caplog.set_level(logging.INFO, logger=APP_LOGGER)
    app = create_app(build_settings(data_dir=tmp_path / "store", workers=0, **settings))
    with TestClient(app) as client:
        client.get("/v1/admin/status", headers={"Authorization": f"Bearer {TOKEN}"})
        client.get("/healthz")
    lines = open_admin_warnings(caplog)
    if warned:
        assert len(lines) == 1
        assert "BATCHSTASH_TOKEN" in lines[0] and "127.0.0.1:8000" in lines[0]
    else:
        assert lines == []


def test_openapi_names_the_replica_refusal(tmp_path: Path) -> None:
    with replica(tmp_path / "store") as client:
        paths = client.get("/openapi.json").json()["paths"]
    for path, method in [
        ("/v1/admin/clear", "post"),
        ("/v1/admin/prime", "post"),
        ("/v1/admin/prime", "delete"),
    ]:
        response = paths[path][method]["responses"]["409"]
        assert "role serve" in response["description"], (path, method)
        ref = response["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody")
    assert "role serve" not in paths["/v1/admin/status"]["get"]["responses"]["409"]["description"]

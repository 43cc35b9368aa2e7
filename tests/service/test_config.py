"""Settings: CLI overrides > BATCHSTASH_* environment > TOML config file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from batchstash.client import InvalidRequestError
from batchstash.service.config import DEFAULT_DATASET, Settings, build_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BATCHSTASH_"):
            monkeypatch.delenv(name)


def test_defaults_serve_the_iris_example_from_data_on_loopback() -> None:
    settings = build_settings()
    assert (settings.host, settings.port, settings.data_dir) == ("127.0.0.1", 8000, "data")
    assert settings.dataset == DEFAULT_DATASET and settings.admin_token() is None


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "batchstash.toml"
    config.write_text(
        'port = 9001\nworkers = 3\ndata_dir = "/srv/a"\n[dataset_options]\nbatch_size = 7\n'
    )
    assert build_settings(config).port == 9001
    monkeypatch.setenv("BATCHSTASH_PORT", "9002")
    monkeypatch.setenv("BATCHSTASH_DATASET_OPTIONS", '{"batch_size": 9}')
    settings = build_settings(config, port=9003, workers=None)
    assert settings.port == 9003  # CLI wins over env
    assert settings.workers == 3  # from the file; None overrides are ignored
    assert settings.dataset_options == {"batch_size": 9}  # env wins over the file
    assert build_settings(config).port == 9002
    monkeypatch.setenv("BATCHSTASH_CONFIG", str(config))
    assert build_settings().data_dir == "/srv/a"


def test_token_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n")
    assert build_settings(token_file=secret).admin_token() == "s3cret"
    assert build_settings(token="direct", token_file=secret).admin_token() == "direct"
    with pytest.raises(InvalidRequestError, match="cannot read token_file"):
        build_settings(token_file=tmp_path / "missing").admin_token()


@pytest.mark.parametrize(
    "bad", [{"port": 70000}, {"dataset": "no-colon"}, {"workers": -1}, {"unknown": 1}]
)
def test_invalid_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError, match="does not exist"):
        build_settings(tmp_path / "nope.toml")


def test_every_setting_is_described_for_serve_help() -> None:
    from typer.testing import CliRunner

    from batchstash.service.cli import app
    from batchstash.service.config import Settings, settings_help

    described = dict(settings_help())
    assert set(described) == {f"BATCHSTASH_{f.upper()}" for f in Settings.model_fields}
    assert all(text for text in described.values()), [k for k, v in described.items() if not v]
    shown = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert all(name in shown for name in described)

"""Server settings (pydantic-settings): CLI arguments > ``BATCHSTASH_*`` env > config file."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from batchstash.client import InvalidRequestError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["DEFAULT_DATASET", "Settings", "build_settings", "settings_help"]

DEFAULT_DATASET = "batchstash.service.examples:iris"


class Settings(BaseSettings):
    """Everything the server is configured with; each field is also ``BATCHSTASH_<NAME>``.

    Attributes:
        host: the address to bind.
        port: the TCP port.
        data_dir: the store: a directory (a volume in containers) or an ``s3://bucket/prefix``
            URL (endpoint and credentials from the standard ``AWS_*`` environment).
        role: ``all`` serves and primes (needs the dataset's code); ``serve`` is a read-only
            replica that serves a store primed elsewhere from the store alone (no dataset);
            ``prime`` is a one-shot job that primes the store and exits (0 when primed).
        dataset: the importable ``package.module:function`` that builds the :class:`BatchStash`.
        dataset_options: extra keyword arguments of the dataset factory (JSON in the env).
        token: the bearer token of admin endpoints (none: admin is open, for loopback use).
        token_file: a file holding the token (a Compose secret), used when ``token`` is unset.
        read_requires_token: also require the token to read metadata, batches and /metrics
            (and turn off /docs and /openapi.json, which cannot carry it).
        docs: serve /openapi.json and /docs (Swagger UI from the server's own assets, no CDN).
        workers: priming processes.
        executor: where priming runs: ``process`` (a local pool), ``inline`` (this process) or
            ``ray`` (a Ray cluster; the ``ray`` extra).
        ray_address: with ``executor=ray``: empty starts a local Ray for this process (with
            ``workers`` CPUs); ``auto`` or ``ray://host:port`` joins a running cluster.
        chunk_size: id sets per priming task (0: automatic).
        compression: how a prime stores batch objects: ``none``, ``zstd`` (compressed at
            ``compression_level``) or ``auto`` (zstd for the attribute groups a sample batch
            shrinks by 1.2 x or more); served compressed to clients that accept zstd.
        compression_level: the zstd level (-7 .. 22; 3 by default).
        prime_verify: every prime reads and verifies every stored object before it encodes
            (off: it trusts a listing of the store checked against the sizes and versions
            recorded when the objects were written, and reads only objects changed since).
        prime_on_start: start priming in the background when the server starts.
        retry_after_s: the ``Retry-After`` given with a batch that is not encoded yet.
        log_level: the log level (``critical``, ``error``, ``warning``, ``info``, ``debug``).
        log_format: ``text`` (one human line a record) or ``json`` (one JSON object a line on
            stderr, batchstash's and uvicorn's alike: time, level, logger, message and fields).
        access_log: log one line per HTTP request (off: a trainer makes thousands).
        records_refresh_s: how long a server trusts the store's records before checking them
            again (unset: 0 on a directory, 2 s on S3).
        cache_dir: where a server keeps verified objects of a remote (S3) store to serve from
            local disk (unset: a directory under the system's temp dir); emptied at start.
        cache_max_bytes: the most bytes that cache holds (0: no cache).
        data_listener: serve batch payloads on a second port too, from threads that hand the
            mapped bytes to the kernel (less CPU per GB than the API port); the API
            advertises it in the ``X-Batchstash-Data-Port`` header and clients use it when
            they can reach it, else the API port.
        data_port: the data listener's port (unset: ``port + 1``, and no listener, with a
            warning, if that one is taken; ``0``: any free port).
        data_advertise_port: the port clients are told to use (unset: ``data_port``); set it
            when a proxy or a container port mapping puts the data listener elsewhere.
        data_sendfile: how the data listener sends a whole stored file: ``true``, with
            ``sendfile`` (the kernel reads the page cache itself); ``false``, its mapped pages
            with ``sendmsg``; ``auto`` (default), both in turn at first, then the one that
            cost this process less CPU per byte (which wins depends on the machine: see the
            README).
    """

    model_config = SettingsConfigDict(env_prefix="BATCHSTASH_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    data_dir: str = "data"
    role: Literal["all", "serve", "prime"] = "all"
    dataset: str = DEFAULT_DATASET
    dataset_options: dict[str, Any] = Field(default_factory=dict)
    token: SecretStr | None = None
    token_file: Path | None = None
    read_requires_token: bool = False
    docs: bool = True
    workers: int = Field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)), ge=0)
    executor: Literal["process", "inline", "ray"] = "process"
    ray_address: str = ""
    chunk_size: int = Field(0, ge=0)
    compression: Literal["none", "zstd", "auto"] = "none"
    compression_level: int = Field(3, ge=-7, le=22)
    prime_verify: bool = False
    prime_on_start: bool = False
    retry_after_s: int = Field(2, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = False
    records_refresh_s: float | None = Field(None, ge=0)
    cache_dir: str | None = None
    cache_max_bytes: int = Field(2 * 1024**3, ge=0)
    data_listener: bool = True
    data_port: int | None = Field(None, ge=0, le=65535)
    data_advertise_port: int | None = Field(None, ge=1, le=65535)
    data_sendfile: bool | Literal["auto"] = "auto"

    @field_validator("data_sendfile", mode="before")
    @classmethod
    def _sendfile_mode(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true, false or auto, not {value!r}")

    @field_validator("data_dir", mode="before")
    @classmethod
    def _store_url(cls, value: Any) -> str:
        return str(value)  # a path or a URL: never a Path, which would mangle "s3://"

    @field_validator("log_level", "log_format", "compression", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("dataset")
    @classmethod
    def _factory_spec(cls, value: str) -> str:
        module, _, attr = value.partition(":")
        if not module or not attr:
            raise ValueError("dataset must look like 'package.module:function'")
        return value

    def admin_token(self) -> str | None:
        """The configured bearer token (``token`` or the content of ``token_file``)."""
        if self.token is not None:
            return self.token.get_secret_value() or None
        if self.token_file is not None:
            try:
                return self.token_file.read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                message = f"cannot read token_file {self.token_file}: {exc}"
                raise InvalidRequestError(message) from None
        return None


def build_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build settings from ``overrides`` (CLI), then the environment, then a TOML config file.

    Args:
        config_file: a TOML file with the same keys as :class:`Settings` (``BATCHSTASH_CONFIG`` is
            used when not given).
        **overrides: values that win over everything else; ``None`` values are ignored.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    path = config_file or os.environ.get("BATCHSTASH_CONFIG")
    try:
        return _build(given, path)
    except SettingsError as exc:  # e.g. BATCHSTASH_DATASET_OPTIONS that is not JSON
        cause = exc.__cause__ or exc
        raise InvalidRequestError(f"invalid setting: {exc} ({cause})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequestError(f"config file {path} is not valid TOML: {exc}") from None


def _build(given: dict[str, Any], path: str | Path | None) -> Settings:
    if not path:
        return Settings(**given)
    toml_path = Path(path)
    if not toml_path.is_file():
        raise InvalidRequestError(f"config file {toml_path} does not exist")

    class FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_path)
            return (init_settings, env_settings, toml, file_secret_settings)

    return FileSettings(**given)


def settings_help() -> list[tuple[str, str]]:
    """Every setting as ``(BATCHSTASH_NAME, what it is)``, from :class:`Settings`' docstring."""
    doc = Settings.__doc__ or ""
    described: dict[str, str] = {}
    name = None
    for line in doc.split("Attributes:", 1)[-1].splitlines():
        text = line.strip()
        head, sep, rest = text.partition(":")
        if sep and head in Settings.model_fields:
            name, described[head] = head, rest.strip()
        elif name and text:
            described[name] += " " + text
    return [
        (f"BATCHSTASH_{field.upper()}", described.get(field, "")) for field in Settings.model_fields
    ]

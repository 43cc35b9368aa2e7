"""The ``batchstash`` command: ``serve`` (needs the ``service`` extra) and operator commands."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from batchstash.client.errors import BatchstashError

__all__ = ["app", "main"]

app = typer.Typer(
    help="Pre-encoded PyTorch batches over HTTP.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
T = TypeVar("T")

Url = Annotated[str, typer.Option("--url", envvar="BATCHSTASH_URL", help="The server URL.")]
Token = Annotated[
    str | None,
    typer.Option("--token", envvar="BATCHSTASH_TOKEN", help="Bearer token of admin endpoints."),
]
DEFAULT_URL = "http://127.0.0.1:8000"
INSTALL_HINT = "batchstash serve needs the service extra: pip install 'batchstash[service]'"


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except BatchstashError as exc:
        raise _fail(f"{exc.message} ({exc.code})") from None


def _settings_epilog() -> str:
    try:
        from batchstash.service.config import settings_help
    except ImportError:
        return INSTALL_HINT
    lines = [f"{name}: {text.replace('``', '')}" for name, text in settings_help()]
    return "Every setting (also in a TOML file, --config / BATCHSTASH_CONFIG):\n\n" + "\n\n".join(
        lines
    )


@app.command(epilog=_settings_epilog())
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default 8000).")] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(help="The store: a directory (default ./data) or s3://bucket/prefix."),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Dataset factory 'package.module:function' (default the iris example)."),
    ] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token for admin endpoints.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML settings file.")] = None,
    workers: Annotated[int | None, typer.Option(help="Priming processes.")] = None,
    role: Annotated[
        str | None,
        typer.Option(
            help="'all' serves and primes (default); 'serve' is a read-only replica that "
            "serves a store primed elsewhere and imports no dataset code; 'prime' primes the "
            "store once and exits (non-zero on failure)."
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(
            help="Where priming runs: 'process' (a local pool, default), 'inline' or 'ray'."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="With --executor ray: '' starts a local Ray; 'auto' or ray://host:port."),
    ] = None,
    prime: Annotated[
        bool | None,
        typer.Option("--prime/--no-prime", help="Start priming in the background on start."),
    ] = None,
) -> None:
    """Serve a stash over HTTP (settings also from BATCHSTASH_* variables)."""
    try:
        from batchstash.service.config import build_settings
        from batchstash.service.server import serve as run_server
    except ImportError:
        raise _fail(INSTALL_HINT) from None
    from pydantic import ValidationError

    try:
        settings = _run(
            lambda: build_settings(
                config,
                host=host,
                port=port,
                data_dir=data_dir,
                dataset=dataset,
                token=token,
                workers=workers,
                role=role,
                executor=executor,
                ray_address=ray_address,
                prime_on_start=prime,
            )
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if settings.log_format != "json":
        _run(lambda: run_server(settings))
        return
    try:
        run_server(settings)
    except BatchstashError as exc:  # stderr stays one JSON object a line
        logging.getLogger(__name__).error("%s", exc.message, extra={"code": exc.code})
        raise typer.Exit(1) from None


def _client(url: str, token: str | None) -> Any:
    from urllib.parse import urlsplit

    from batchstash.client.http import BatchClient

    for one in url.split(","):
        parts = urlsplit(one.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _fail(f"--url {one.strip()!r} must look like http://host:port")
    # retries are reported by the final one-line error, not by a warning per attempt
    logging.getLogger("batchstash.client").setLevel(logging.ERROR)
    # an operator wants a fast answer: two quick retries, a 5 s connect timeout
    urls = [u.strip() for u in url.split(",")]
    return BatchClient(
        urls if len(urls) > 1 else urls[0],
        token=token,
        timeout=5.0,
        retries=2,
        backoff=0.2,
        max_delay=2.0,
    )


def _show_status(body: dict[str, Any]) -> None:
    table = Table(
        title=f"batchstash: {body['state']}" + (" (stale store)" if body.get("stale") else "")
    )
    for column in ("split", "done", "total", "%"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split, entry in body["splits"].items():
        pct = 100 * entry["done"] / entry["total"] if entry["total"] else 100.0
        table.add_row(split, str(entry["done"]), str(entry["total"]), f"{pct:.0f}")
    Console().print(table)
    rate, eta = body.get("rate"), body.get("eta_s")
    facts = [
        f"store {body.get('store_bytes', 0) / 1e6:.1f} MB",
        f"rate {rate:.1f} batches/s" if rate else "",
        f"ETA {eta:.0f} s" if eta else "",
    ]
    Console().print("  ".join(f for f in facts if f))
    if body.get("error"):
        Console().print(f"[red]last error:[/red] {body['error']['message']}", highlight=False)


@app.command()
def prime(
    url: Url = DEFAULT_URL,
    token: Token = None,
    wait: Annotated[bool, typer.Option(help="Show a progress bar until the prime ends.")] = False,
) -> None:
    """Start priming on the server (joins a running prime; a role-serve replica only joins)."""
    client = _client(url, token)
    body = _run(client.prime)
    if not wait:
        Console().print(f"prime {'joined' if body.get('joined') else 'started'}: {body['state']}")
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console()) as bar:
        tasks: dict[str, Any] = {}
        while True:
            for split, entry in body["splits"].items():
                if split not in tasks:
                    tasks[split] = bar.add_task(split, total=entry["total"])
                bar.update(tasks[split], completed=entry["done"], total=entry["total"])
            if body["state"] != "running":
                break
            time.sleep(0.5)
            body = _run(client.status)
    if body["state"] != "done":
        message = (body.get("error") or {}).get("message", body["state"])
        raise _fail(f"prime {body['state']}: {message}")
    Console().print("prime done")


@app.command()
def status(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Show the prime state, per-split progress, rate, ETA and store size."""
    _show_status(_run(_client(url, token).status))


@app.command()
def clear(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Remove the encoded batches (refused while priming, and by a role-serve replica)."""
    _run(_client(url, token).clear)
    Console().print("cleared")


@app.command()
def cancel(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Cancel a running prime (exits 1 when none is running, or on a role-serve replica)."""
    body = _run(_client(url, token).cancel)
    if not body.get("cancelled"):
        raise _fail(f"no prime is running (last state: {body['state']})")
    Console().print(f"cancel requested: job {body.get('job_id')} ({body['state']})")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        Console().print(f"batchstash {version('batchstash')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Pre-encoded PyTorch batches over HTTP."""


def main() -> None:
    """Entry point of the ``batchstash`` console script."""
    app()


if __name__ == "__main__":
    main()

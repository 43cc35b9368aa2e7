"""``python -m benchmarks [--quick] [--only SECTIONS] [--out DIR] [--device cuda]``: run, report.

Starts real servers on 127.0.0.1 over synthetic stores in a temporary directory, measures every
section (or those ``--only`` names, e.g. ``--only wire``: the ceiling and the serving rows) in
the same run, prints the tables and writes ``results.json``, ``results.png`` and ``results.md``
to ``--out`` (default ``benchmarks/results/<mode>``). ``--quick`` is the CI smoke size; its
numbers are not meant to be compared.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import report
from .profiles import PROFILES
from .runner import ALIASES, SECTIONS, run, select
from .servers import REPO_ROOT

logger = logging.getLogger("benchmarks")

DOC = REPO_ROOT / "docs" / "benchmarks.md"
CHART = REPO_ROOT / "benchmarks" / "chart.png"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _update_doc(markdown: str, chart: str) -> None:
    """Replace the results block of docs/benchmarks.md with this run's machine, table and chart."""
    text = DOC.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{DOC} has no {START} ... {END} block")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    block = f"{START}\n{markdown}\n![benchmark chart]({chart})\n{END}"
    DOC.write_text(head + block + tail, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the suite, write and print the report."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke sizes (about a minute)")
    parser.add_argument("--out", type=Path, help="where results.{json,png,md} go")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda adds host-to-device copies and a trainer loop",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where the stores go (default: a temporary directory, removed)",
    )
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        metavar="SECTION[,...]",
        help=f"run only these sections: {', '.join([*SECTIONS, *ALIASES])} "
        "(wire: ceiling and serving)",
    )
    parser.add_argument(
        "--update-doc",
        action="store_true",
        help="put the table in docs/benchmarks.md, the chart in benchmarks/chart.png",
    )
    args = parser.parse_args(argv)
    try:
        select(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    if args.update_doc and args.only:
        parser.error("--update-doc needs every section: leave out --only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    profile = PROFILES["quick" if args.quick else "default"]
    out = (args.out or REPO_ROOT / "benchmarks" / "results" / profile.name).resolve()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="batchstash-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        results = run(profile, work, out / "logs", args.device, args.only)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    results.update(
        mode=profile.name,
        profile=profile.__dict__,
        machine=report.machine(),
        elapsed_s=time.perf_counter() - start,
        created=time.strftime("%Y-%m-%d %H:%M"),
    )
    print(report.write(results, out))
    print(f"machine: {report.machine_markdown(results['machine'])}")
    print(f"wrote {out / 'results.json'}, {out / 'results.png'} in {results['elapsed_s']:.0f} s")
    if args.update_doc:  # results/ is git-ignored: the chart the doc shows is kept beside it
        shutil.copyfile(out / "results.png", CHART)
        _update_doc(
            (out / "results.md").read_text(encoding="utf-8"),
            Path(os.path.relpath(CHART, DOC.parent)).as_posix(),
        )
        print(f"updated {DOC} and {CHART}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The one-run benchmark (`python -m bench`) and the evaluation on scans from other sources (`bench.external`)."""
from pathlib import Path

from convert.portable import ROOT, portable  # noqa: F401 (portable: re-exported for the reports)
from device.atomic import atomic_write_bytes, atomic_write_json


def command_line(module: str, argv) -> str:
    """The command a report was made with, in a form that holds no absolute path."""
    import sys

    return portable(f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:]))


def write_report(folder: Path, stem: str, result: dict, markdown: str) -> None:
    """<folder>/<stem>.json and .md (the model card reads the .md), and the table on stdout."""
    atomic_write_json(folder / f"{stem}.json", result)
    atomic_write_bytes(folder / f"{stem}.md", markdown.encode())
    print(markdown)


def unfinished(run: Path, files=("manifest.json", "split.json")) -> str | None:
    """The one line for a --run folder a benchmark cannot read (missing, or training never finished), else None."""
    if not run.is_dir():
        return f"--run {run}: no such run folder (train one with `make distill`)"
    missing = [f for f in files if not (run / f).is_file()]
    return f"--run {run} is not a finished training run (no {', '.join(missing)})" if missing else None

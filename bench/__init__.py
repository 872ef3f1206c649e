"""The one-run benchmark (`python -m bench`) and the evaluation on scans from other sources (`bench.external`)."""
from pathlib import Path

from device.atomic import atomic_write_bytes, atomic_write_json


def write_report(folder: Path, stem: str, result: dict, markdown: str) -> None:
    """<folder>/<stem>.json and .md (the model card reads the .md), and the table on stdout."""
    atomic_write_json(folder / f"{stem}.json", result)
    atomic_write_bytes(folder / f"{stem}.md", markdown.encode())
    print(markdown)

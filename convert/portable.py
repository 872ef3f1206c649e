"""Paths in what travels (reports, model cards, sidecars) are made portable here: this machine's paths never ship.
Lives in convert/ because convert.ship writes the card; bench reuses it (bench may import convert, never the
reverse)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def portable(text: str) -> str:
    """text with every absolute path made portable: relative to the repository when inside it, else its last two
    parts (a run folder and a file). Reports, cards and sidecars travel; this machine's paths must not."""
    def short(m):
        p = Path(m.group(0))
        try:
            return str(p.resolve().relative_to(ROOT))
        except ValueError:
            return str(Path(*p.parts[-2:])) if len(p.parts) > 2 else p.name
    return re.sub(r"(?<![\w.~:/])/[^\s`'\",;)]+", short, text)

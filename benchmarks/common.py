"""What every benchmark does with its result: print it, and write it where metrics live."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def publish(result: dict[str, Any], out: str | Path, print_table: Callable[[dict[str, Any]], None]) -> None:
    print_table(result)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")

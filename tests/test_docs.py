"""A cheap stale-doc check: every key of params.yaml is named in the user's documentation."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/GUIDE.md")


def keys(tree: dict, prefix: str = "") -> list[str]:
    found = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        found.append(dotted)
        # tune.space holds search spaces (data), not knobs: its families are named, not their ranges
        if isinstance(value, dict) and dotted != "tune.space":
            found += keys(value, dotted + ".")
    return found


def test_every_params_key_is_named_in_the_documentation():
    text = "\n".join((REPO / name).read_text(encoding="utf-8") for name in DOCS)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    def named(key: str) -> bool:  # as `key`, `section.key`, ... or a YAML line `key:`
        parts = key.split(".")
        return (any(f"`{'.'.join(parts[i:])}`" in text for i in range(len(parts)))
                or f"{parts[-1]}:" in text)

    missing = [key for key in keys(params) if not named(key)]
    assert missing == [], f"params.yaml keys no document names: {missing}"


def test_the_generated_tables_agree_with_the_metrics():
    """The README's and docs/RESULTS.md's generated tables are what tools/results.py renders
    from metrics/*.json."""
    from tools.results import DOCUMENTS, render

    for document in DOCUMENTS:
        text = document.read_text(encoding="utf-8")
        assert "<!-- begin generated: " in text, document
        assert render(text, REPO / "metrics") == text, f"{document} is stale: run python tools/results.py"

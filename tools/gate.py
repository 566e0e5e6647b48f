"""CI metric gate (a tool, not part of the library): ``python tools/gate.py``.

Runs the real pipeline with the default params (``dvc repro``), prints ``dvc metrics diff
HEAD``, and exits non-zero when a metric of ``metrics/evaluate.json`` falls below the committed
value (``git show HEAD:metrics/evaluate.json``) by more than its tolerance in
``metrics/thresholds.yaml``, or under its floor there. Each entry of ``also`` in that file holds
the same checks for another metrics file (the leave-one-corpus-out figure).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ser.training.metrics import METRICS  # noqa: E402
from ser.training.metrics import lookup as metric  # noqa: E402

DEFAULT_METRICS = "metrics/evaluate.json"
DEFAULT_THRESHOLDS = "metrics/thresholds.yaml"


def lookup(metrics: dict[str, Any] | None, dotted: str) -> float | None:
    """A score of evaluate.json by dotted name, or None when it is not there."""
    try:
        return metric(metrics or {}, dotted)
    except (KeyError, TypeError, ValueError):
        return None


def dvc_command() -> list[str]:
    """``dvc`` on PATH, else the one installed beside this Python."""
    return [shutil.which("dvc")] if shutil.which("dvc") else [sys.executable, "-m", "dvc"]


def committed_metrics(path: str, revision: str = "HEAD") -> dict[str, Any] | None:
    result = subprocess.run(["git", "show", f"{revision}:{path}"], capture_output=True, text=True)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


def check(current: dict[str, Any], baseline: dict[str, Any] | None, thresholds: dict[str, Any]) -> list[str]:
    """Human-readable failures (empty = pass)."""
    failures = []
    if baseline is not None and baseline.get("protocol") != current.get("protocol"):
        failures.append(f"protocol changed: committed '{baseline.get('protocol')}', now '{current.get('protocol')}'")
    for name, tolerance in (thresholds.get("tolerance") or {}).items():
        now = lookup(current, name)
        if now is None:
            failures.append(f"{name}: missing from the new metrics")
            continue
        before = lookup(baseline, name) if baseline is not None else None
        if before is not None and now < before - float(tolerance):
            failures.append(f"{name}: {now:.4f} < committed {before:.4f} - tolerance {float(tolerance):.4f}")
    for name, floor in (thresholds.get("minimum") or {}).items():
        now = lookup(current, name)
        if now is None:
            failures.append(f"{name}: missing from the new metrics (floor {float(floor):.4f})")
        elif now < float(floor):
            failures.append(f"{name}: {now:.4f} is under the floor {float(floor):.4f}")
    return failures


def check_file(path: str, thresholds: dict[str, Any], revision: str) -> list[str]:
    """``check`` for another metrics file of the pipeline, named in the failures."""
    if not Path(path).is_file():
        return [f"{path} was not produced"]
    current = json.loads(Path(path).read_text(encoding="utf-8"))
    return [f"{path}: {failure}" for failure in check(current, committed_metrics(path, revision), thresholds)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/gate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", default=DEFAULT_METRICS)
    parser.add_argument("--thresholds", default=DEFAULT_THRESHOLDS)
    parser.add_argument("--baseline-rev", default="HEAD", help="git revision holding the committed metrics")
    parser.add_argument("--no-repro", action="store_true", help="compare the metrics already in the work tree")
    args = parser.parse_args(argv)

    baseline = committed_metrics(args.metrics, args.baseline_rev)
    if not args.no_repro:
        print("gate: dvc repro (default params)", flush=True)
        if subprocess.run([*dvc_command(), "repro"]).returncode != 0:
            print("gate: FAIL: dvc repro failed", file=sys.stderr)
            return 2
    print(f"gate: dvc metrics diff {args.baseline_rev}", flush=True)
    subprocess.run([*dvc_command(), "metrics", "diff", args.baseline_rev, "--precision", "4"])
    metrics_path = Path(args.metrics)
    if not metrics_path.is_file():
        print(f"gate: FAIL: {metrics_path} was not produced", file=sys.stderr)
        return 2
    current = json.loads(metrics_path.read_text(encoding="utf-8"))
    thresholds = yaml.safe_load(Path(args.thresholds).read_text(encoding="utf-8")) or {}
    if baseline is None:
        print(f"gate: no {args.metrics} at {args.baseline_rev}; only the floors apply (commit the metrics "
              "to set the baseline)")
    failures = check(current, baseline, thresholds)
    for other in thresholds.get("also") or []:
        failures += check_file(other["file"], other, args.baseline_rev)
    summary = ", ".join(f"{k}={lookup(current, k):.4f}" for k in METRICS
                        if lookup(current, k) is not None)
    if failures:
        print("gate: FAIL: metric regression\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"gate: PASS ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage harmonize: probe every clip under --raw and write one metadata table and a summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ser.project import load_params, repo_root
from ser.data.custom import CustomCorpusError
from ser.data.harmonize import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, required=True, help="folder of <corpus>/ trees (data/raw)")
    parser.add_argument("--out", type=Path, required=True, help="metadata table to write (.parquet)")
    parser.add_argument("--summary", type=Path, required=True, help="per-corpus summary (metrics JSON)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    try:
        frame, summary = run(args.raw, args.out, args.summary, load_params(args.params).data, root=repo_root())
    except (CustomCorpusError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for corpus, numbers in summary.items():
        print(f"{corpus}: {numbers['clips']} clips, {numbers['ok']} ok, {numbers['quarantined']} quarantined, "
              f"{numbers['speakers']} speakers ({numbers['female_speakers']} f / {numbers['male_speakers']} m), "
              f"{numbers['hours']:.2f} h")
    for row in frame[frame["status"] == "quarantined"].itertuples():
        print(f"quarantined {row.path}: {row.problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

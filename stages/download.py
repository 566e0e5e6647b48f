"""Stage download: obtain the corpora of params.yaml ``data.corpora`` into --out.

Each corpus comes from $SER_DATA_MIRROR/<corpus>/ when present, else from its official source,
and is verified and listed in <out>/<corpus>/manifest.csv. A corpus of data.custom is copied from
its manifest or folder tree (paths relative to the repo root), with its labels in labels.csv.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ser.project import load_params, repo_root
from ser.data.custom import CustomCorpusError
from ser.data.download import DownloadError, DownloadSettings, mirror_root, obtain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder receiving <corpus>/ trees (data/raw)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    data = load_params(args.params).data
    settings = DownloadSettings.from_params(data.download)
    print(f"mirror: {mirror_root() or 'none (SER_DATA_MIRROR unset)'}")
    try:
        reports = obtain(data.corpora, args.out, settings=settings, custom=data.custom, base=repo_root())
    except (DownloadError, CustomCorpusError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for report in reports:
        check = report.verification
        absent = f"; documented absences: {', '.join(check.known_absent)}" if check.known_absent else ""
        print(f"{report.corpus}: {report.action} from {report.origin}: {check.clips} clips "
              f"({check.expected} expected{absent})")
        for warning in check.warnings():
            print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

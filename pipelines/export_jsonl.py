"""Export a dataset's pipeline data (interactions + embedding store) as GMTRouter JSONL splits.

    python -m pipelines.export_jsonl mt_bench ./exported      # training_set.jsonl, valid_set.jsonl, test_set.jsonl

Reads the committed ``interactions/<dataset>`` and ``embeddings/<dataset>`` under the data root
(``$GMTROUTER_HOME``), verifies every file against its manifest (sha256), and streams the splits out in
bounded batches, each file written atomically.  Exit status 2 with one line on error.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m pipelines.export_jsonl", description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("out_dir")
    ap.add_argument("--home", default=None, help="data root (default $GMTROUTER_HOME, else <repo>/.gmtrouter)")
    args = ap.parse_args(argv)
    from assets.data_steps import export_jsonl
    from assets.storage import DataStore

    try:
        paths = export_jsonl(DataStore(args.dataset, args.home), args.out_dir)
    except (OSError, ValueError) as exc:  # ManifestError, FormatError, a missing manifest: one line
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split, p in paths.items():
        print(f"{split}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Compare runs: ``python tasks/compare.py outputs/detection/multirun_<time>`` (a sweep's trials) or
``python tasks/compare.py RUN_DIR RUN_DIR ...``.

Prints one table of the runs' differing overrides and final metrics, best first by the monitored metric
(unfinished runs last), and writes it as ``comparison.csv`` and ``comparison.md``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as a script from any directory

from tasks.common.errors import UserError  # noqa: E402
from tasks.core.compare import compare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, or multirun directories")
    parser.add_argument("--out", type=Path, help="where comparison.csv/.md go (default: the first path)")
    parser.add_argument("--metrics", help="comma-separated metrics.json keys to show (default: the main ones)")
    parser.add_argument("--sort", help="metric to rank by, highest first (default: the runs' task.monitor)")
    args = parser.parse_args(argv)
    try:
        compare(args.paths, args.out, args.metrics.split(",") if args.metrics else None, args.sort)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m local.rehearsal.cli [--instances N] [--consumers M] [--keep]`: start, run the suite, stop; exit 1 on
any failure."""

from __future__ import annotations

import argparse
import sys
import time

from infra.manifest import REPO_ROOT
from local.rehearsal.run import rehearsal
from local.rehearsal.suite import run_suite


def main(argv: list[str] | None = None) -> int:
    """Run the rehearsal; 0 when every case passed."""
    parser = argparse.ArgumentParser(prog="invoke rehearse", description=__doc__)
    parser.add_argument("--instances", type=int, default=3, help="instances per function (capped by its max)")
    parser.add_argument("--consumers", type=int, default=2, help="worker pool instances (within its min..max)")
    parser.add_argument("--eager", action="store_true", help="start every instance slot up front (else on demand, "
                        "as Cloud Run scales from zero)")
    parser.add_argument("--case", action="append", default=[], help="only cases whose name contains this")
    parser.add_argument("--dir", default=str(REPO_ROOT / ".local" / "rehearsal"), help="state and logs")
    args = parser.parse_args(argv)
    started = time.monotonic()
    from pathlib import Path

    try:
        with rehearsal(Path(args.dir), instances=args.instances, consumers=args.consumers,
                       eager=args.eager) as running:
            print(f"deployment up in {time.monotonic() - started:.0f} s; running the suite", flush=True)
            passed, failed = run_suite(running, args.case or None)
    except Exception as exc:  # the deployment itself did not come up: say why, fail
        print(f"rehearsal: the deployment did not start: {exc}", file=sys.stderr, flush=True)
        print("rehearsal: 0 passed, 1 failed", flush=True)
        return 1
    print(f"rehearsal took {time.monotonic() - started:.0f} s (logs in {args.dir}/logs)", flush=True)
    return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Runs the Autobahn fuzzingclient cases (kosoku) against a WebSocket URL and judges them.

Usage: verdict.py URL OUTDIR [--include CASE ...] [--exclude CASE ...] [--parallelism N]

A case passes when its behaviour is OK, NON-STRICT or INFORMATIONAL and its closing behaviour is
OK or INFORMATIONAL (kosoku's own `passed`); UNIMPLEMENTED is accepted only for the compression
cases 12.* and 13.* (permessage-deflate, which the server does not offer). Everything else
(FAILED, WRONG CODE, UNCLEAN, ERROR, ...) fails the run. Prints a summary and writes kosoku's
Autobahn-format reports (index.json, one JSON and HTML file per case) to OUTDIR.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import time

from kosoku import FailureError, run_fuzzingclient
from kosoku._report import write_reports

ACCEPTED = {"OK", "NON-STRICT", "INFORMATIONAL"}
ACCEPTED_CLOSE = {"OK", "INFORMATIONAL"}


def acceptable(result) -> bool:
    behavior, close = result.behavior.value, result.behavior_close.value
    if behavior == "UNIMPLEMENTED" and result.case_id.split(".")[0] in ("12", "13"):
        return close in ACCEPTED_CLOSE or close == "UNIMPLEMENTED"
    return behavior in ACCEPTED and close in ACCEPTED_CLOSE


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("outdir")
    parser.add_argument("--include", action="append")
    parser.add_argument("--exclude", action="append")
    parser.add_argument("--parallelism", type=int, default=1)
    args = parser.parse_args()

    started = time.monotonic()
    try:
        results = await run_fuzzingclient(
            args.url, args.include, args.exclude, concurrency=args.parallelism
        )
    except FailureError as failure:
        results = failure.results
    took = time.monotonic() - started
    write_reports(results, args.outdir)

    behaviours = collections.Counter(r.behavior.value for r in results)
    closes = collections.Counter(r.behavior_close.value for r in results)
    bad = [r for r in results if not acceptable(r)]
    print(f"{len(results)} cases in {took:.1f} s against {args.url}")
    print("behaviour:", dict(sorted(behaviours.items())))
    print("closing:  ", dict(sorted(closes.items())))
    for verdict in ("NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"):
        ids = [r.case_id for r in results if r.behavior.value == verdict]
        if ids:
            print(f"{verdict}: {' '.join(ids)}")
    for r in bad:
        print(
            f"FAILED {r.case_id}: behaviour {r.behavior.value} ({r.result}); "
            f"closing {r.behavior_close.value} ({r.result_close}); "
            f"remote close {r.remote_close_code} {r.remote_close_reason!r}",
            file=sys.stderr,
        )
    print(f"{len(bad)} failed")
    return 1 if bad or not results else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

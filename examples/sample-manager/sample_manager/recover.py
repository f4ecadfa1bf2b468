"""Settle interrupted workflows by hand: ``python -m sample_manager.recover --dsn DSN``.

hacore's ``after_promote`` hook does this on every promotion. Without a failover (a worker
killed on the active and started again) its ``running`` workflows wait for the next one;
this command settles them now, with the same rule. Safe while workers run: it leaves alone
every workflow a live worker holds. Prints what it did as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import attrs
import psycopg

from sample_manager.db import DatabaseConfigError, connect, first_line, resolve_dsn
from sample_manager.workflows import recover_interrupted

REASON = "interrupted (its worker stopped), not resumable"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sample-manager-recover", description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $SAMPLE_MANAGER_DSN)")
    parser.add_argument("--reason", default=REASON, help="error recorded on failed workflows")
    args = parser.parse_args(argv)
    try:
        with connect(resolve_dsn(args.dsn), application="sample-manager-recover") as conn:
            done = recover_interrupted(conn, reason=args.reason)
    except (DatabaseConfigError, psycopg.Error) as err:
        print(f"sample-manager-recover: {first_line(err)}", file=sys.stderr)
        return 1
    print(json.dumps(attrs.asdict(done)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

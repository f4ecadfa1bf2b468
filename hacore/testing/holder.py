"""A leader in its own process, for tests that must kill the leader with SIGKILL.

``python -m hacore.testing.holder --backend NAME --settings JSON --node N --ttl T``
campaigns until it wins, publishes its member record, prints one JSON line
``{"token": ..., "holder": N}`` on stdout, then renews every ``ttl / 3`` until it is killed.
A SIGKILL ends nothing: the store must notice the silence by itself, which is what the
contract suite measures. Exits 3 if it loses leadership while alive.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from hacore.backends.records import Member, NodeRole
from hacore.errors import HacoreError, StoreUnavailableError
from hacore.plugins.registry import load_plugins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hacore.testing.holder")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--settings", required=True, help="the backend settings, as JSON")
    parser.add_argument("--node", required=True)
    parser.add_argument("--ttl", type=float, required=True)
    parser.add_argument("--retry-timeout", type=float, default=1.0)
    parser.add_argument("--namespace", default="test")
    args = parser.parse_args(argv)

    cls = load_plugins().registry.consensus(args.backend)
    backend = cls(
        json.loads(args.settings),
        namespace=args.namespace,
        node_name=args.node,
        ttl=args.ttl,
        retry_timeout=args.retry_timeout,
    )
    interval = args.ttl / 3
    lease = None
    while lease is None:
        try:
            lease = backend.campaign()
            if lease is None:
                backend.keepalive()
        except StoreUnavailableError:
            pass
        if lease is None:
            time.sleep(min(interval, 0.1))
    backend.publish_member(Member(name=args.node, role=NodeRole.ACTIVE, healthy=True))
    print(json.dumps({"token": lease.token, "holder": args.node}), flush=True)
    while True:
        time.sleep(interval)
        try:
            if not backend.renew(lease):
                print(f"holder {args.node}: lost leadership", file=sys.stderr, flush=True)
                return 3
        except StoreUnavailableError as err:
            print(f"holder {args.node}: {err}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HacoreError as err:
        print(f"holder: {err}", file=sys.stderr)
        sys.exit(2)

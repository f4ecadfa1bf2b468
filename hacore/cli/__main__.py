"""``python -m hacore.cli``: how the agent's systemd unit and the tests start hacore."""

from __future__ import annotations

import sys

from hacore.cli import main

if __name__ == "__main__":  # a module walk (pkgutil) imports this too: it must not run then
    main(sys.argv[1:])

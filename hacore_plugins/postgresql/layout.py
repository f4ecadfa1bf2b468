"""Where one node's PostgreSQL files live, all under the backend's own ``data_dir``.

``pgdata/`` is the data directory that clones and rewinds replace; everything that belongs to
this node rather than to the cluster (port, socket, upstream, access rules, passwords, TLS
key) lives beside it in ``node/``, so no copy of another node's files can bring its identity
along.
"""

from __future__ import annotations

from pathlib import Path

import attrs


@attrs.frozen
class Layout:
    home: Path

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def clone_tmp(self) -> Path:
        """A clone is written here and renamed to ``pgdata`` only once it is complete."""
        return self.home / "pgdata.clone"

    @property
    def cloning(self) -> Path:
        """Present while a clone writes straight into an empty ``pgdata``: a start that finds
        it knows ``pgdata`` is an unfinished copy, not a database."""
        return self.home / "pgdata.cloning"

    @property
    def init_tmp(self) -> Path:
        return self.home / "pgdata.init"

    @property
    def aside(self) -> Path:
        """The previous data, for the moment between the two renames of a swap."""
        return self.home / "pgdata.old"

    @property
    def node_dir(self) -> Path:
        return self.home / "node"

    @property
    def node_conf(self) -> Path:
        return self.node_dir / "postgresql.conf"

    @property
    def hba(self) -> Path:
        return self.node_dir / "pg_hba.conf"

    @property
    def ident(self) -> Path:
        return self.node_dir / "pg_ident.conf"

    @property
    def pgpass(self) -> Path:
        return self.node_dir / "pgpass"

    @property
    def state(self) -> Path:
        return self.node_dir / "state.json"

    @property
    def tls_dir(self) -> Path:
        """The server user's own copies of the node's TLS files (0700)."""
        return self.node_dir / "tls"

    @property
    def tls_ca(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def tls_cert(self) -> Path:
        return self.tls_dir / "node.crt"

    @property
    def tls_key(self) -> Path:
        return self.tls_dir / "node.key"

    @property
    def tls_crl(self) -> Path:
        return self.tls_dir / "crl.pem"

    @property
    def run_dir(self) -> Path:
        """The Unix socket directory."""
        return self.home / "run"

    @property
    def log_file(self) -> Path:
        return self.home / "log" / "postgresql.log"

    @property
    def pid_file(self) -> Path:
        return self.pgdata / "postmaster.pid"

    @property
    def standby_signal(self) -> Path:
        return self.pgdata / "standby.signal"

    def owned_dirs(self) -> tuple[Path, ...]:
        return (self.home, self.node_dir, self.run_dir, self.log_file.parent)


#: Relative, so the line is right on every node whatever its ``data_dir``, even when a clone
#: or rewind copies it from another node.
INCLUDE_LINE = "include '../node/postgresql.conf'  # hacore: node-local settings, keep last"

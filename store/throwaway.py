"""A throwaway PostgreSQL server on loopback, for the tests, the benchmarks and trying newsrank on PostgreSQL.

initdb and pg_ctl from Debian's `postgresql` package, in a fresh temporary directory, on a free port, trusting
local connections. As root it runs as the `postgres` user (initdb refuses root). Durability settings are
PostgreSQL's defaults (fsync on): what the tests check of commits holds on it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path


class NoPostgres(RuntimeError):
    """PostgreSQL's server programs are not installed here."""


class ThrowawayPostgres:
    def __init__(self, user: str = "newsrank") -> None:
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not binaries:
            raise NoPostgres("PostgreSQL is not installed (as root: apt-get install postgresql; make test does)")
        self.bin = binaries[-1].parent
        self.user = user
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.folder = Path(tempfile.mkdtemp(prefix="newsrank-pg-"))
        if self.run_as:
            shutil.chown(self.folder, self.run_as)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run("initdb", "-D", str(self.folder / "data"), "-A", "trust", "-U", user, "--no-sync")
        self.start()
        self.databases = 0

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        log = str(self.folder / "server.log")
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", log, "-w", "-t", "60", "-o", options, "start")

    def kill(self) -> None:
        """Stop the server at once, as a crash would (an immediate shutdown: no checkpoint, clients cut off)."""
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "stop")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        subprocess.run(command, check=True, capture_output=True, cwd=self.folder)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self.databases += 1
        name = f"newsrank_{self.databases}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server and remove its files."""
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

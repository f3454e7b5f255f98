"""A throwaway PostgreSQL cluster from the Debian server binaries, on 127.0.0.1, for the scale-out test.

`start_cluster()` runs initdb (as the `postgres` user when we are root, since initdb refuses root) in a
private directory under /tmp, and starts the server on a free TCP port of 127.0.0.1 and a Unix socket in
that directory. Local (socket) connections are trusted, so the superuser needs no password, as in the
official image's init phase; TCP connections need a password (scram-sha-256), so a service that connects
over TCP proves its role and password work. `init_databases()` runs infra/postgres/init-databases.sh, the
script docker compose mounts into the image, with the same environment variables.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_server import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
INIT_SCRIPT = REPO_ROOT / "infra" / "postgres" / "init-databases.sh"
SUPERUSER = "postgres"


def pg_bin(name: str) -> str | None:
    """A PostgreSQL program: from PATH, else the newest /usr/lib/postgresql/<major>/bin (Debian's layout)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(versions[-1]) if versions else None


def available() -> bool:
    return all(pg_bin(name) for name in ("initdb", "pg_ctl", "psql"))


@dataclass
class Cluster:
    """A running cluster: where it lives, how to reach it, and the prefix that runs its programs."""

    root: Path
    port: int
    as_user: list[str] = field(default_factory=list)
    running: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, driver: str, user: str, password: str, database: str) -> str:
        """A SQLAlchemy URL over TCP, e.g. driver `postgresql+psycopg2`."""
        from urllib.parse import quote

        return f"{driver}://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{database}"

    def run(self, args: list[str], env: dict[str, str] | None = None, input: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a program as the cluster's owner; `env` goes through `env` so that it survives runuser."""
        prefix = [*self.as_user, "env", *(f"{k}={v}" for k, v in (env or {}).items())]
        return subprocess.run([*prefix, *args], capture_output=True, text=True, input=input, timeout=timeout,
                              cwd=self.root)

    def psql(self, database: str, query: str) -> str:
        """`psql -Atc query` as the superuser over the socket; returns stdout, raises with stderr on error."""
        out = self.run([pg_bin("psql"), "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER,
                        "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", query])
        if out.returncode != 0:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """`pg_ctl stop -m fast` (immediate if that hangs), then remove the cluster's directory."""
        try:
            if self.running:
                out = self.run([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"],
                               timeout=60)
                if out.returncode != 0:
                    self.run([pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"], timeout=60)
                self.running = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(timeout_s: int = 60) -> Cluster:
    """initdb + `pg_ctl start` on a free port of 127.0.0.1; returns once the server accepts connections.

    Durability is off (fsync, synchronous_commit, full_page_writes): the cluster lives for one test.
    """
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl and pg_bin("psql")):
        raise RuntimeError("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="textrnn-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        owner = pwd.getpwnam(SUPERUSER)
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", SUPERUSER, "--"]
    cluster = Cluster(root=root, port=free_port(), as_user=as_user)
    try:
        out = cluster.run([initdb, "-D", str(cluster.data), "-U", SUPERUSER, "--auth-local=trust",
                           "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8", "--locale=C"])
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{out.stdout}\n{out.stderr}")
        options = (f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        out = cluster.run([pg_ctl, "-D", str(cluster.data), "-o", options, "-l", str(cluster.log_path),
                           "-w", "-t", str(timeout_s), "start"], timeout=timeout_s + 30)
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed:\n{out.stdout}\n{out.stderr}\n{cluster.log_tail()}")
        cluster.running = True
    except BaseException:
        cluster.stop()
        raise
    return cluster


def init_databases(cluster: Cluster, roles: dict[str, str]) -> None:
    """Run infra/postgres/init-databases.sh on `cluster` with `roles` (MLFLOW_DB_*, PREFECT_DB_*, OPTUNA_DB_*), as the
    image's entrypoint does: as the superuser, over the local socket."""
    env = {**roles, "POSTGRES_USER": SUPERUSER, "PGHOST": str(cluster.root), "PGPORT": str(cluster.port)}
    # The script on stdin, so that the `postgres` user needs no access to the checkout.
    out = cluster.run(["bash", "-s"], env=env, input=INIT_SCRIPT.read_text())
    if out.returncode != 0:
        raise RuntimeError(f"{INIT_SCRIPT.name} failed:\n{out.stdout}\n{out.stderr}")

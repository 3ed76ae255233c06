"""A real PgBouncer in transaction-pooling mode in front of the test PostgreSQL (Debian's package; `.ci/run`
installs it)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

CONFIG = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {dir}/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
logfile = {dir}/pgbouncer.log
pidfile = {dir}/pgbouncer.pid
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> list[str]:
    """PgBouncer refuses to run as root: as root, run it as the user that can reach the server's socket."""
    if os.geteuid() != 0:
        return []
    for user in ("pgserver", "postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["-u", user]
    return []


@contextmanager
def pgbouncer(server_url: str) -> Iterator[str]:
    """A transaction-pooling PgBouncer in front of ``server_url``; yields a URL like it through the pooler."""
    binary = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
    )
    if binary is None:
        raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer; `.ci/run` does)")
    info = conninfo_to_dict(server_url)
    listen_port = _free_port()
    directory = Path(tempfile.mkdtemp(prefix="syncer-pgbouncer-"))
    directory.chmod(0o755)
    (directory / "users.txt").write_text(f'"{info.get("user", "postgres")}" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        CONFIG.format(
            host=info.get("host", "127.0.0.1"), port=info.get("port", 5432), listen_port=listen_port, dir=directory
        )
    )
    for path in directory.iterdir():
        path.chmod(0o644)
    if _run_as():
        shutil.chown(directory, user=_run_as()[1])
    process = subprocess.Popen([binary, *_run_as(), str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_listening(listen_port, process)
        yield make_conninfo(**(info | {"host": "127.0.0.1", "port": str(listen_port)}))
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise RuntimeError(f"pgbouncer exited: {output}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("pgbouncer did not start listening")

"""The worker's HTTP endpoint: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness).

A small Starlette app served by uvicorn on a thread of its own: starting it, scraping it and
stopping it never block the loop, and a scrape that needs the database opens its own connection.
"""

from __future__ import annotations

import threading
import time

import psycopg
import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from .database import Database
from .errors import ConfigError
from .health import Health

START_SECONDS = 5.0  # for the server to bind its port
READY_TIMEOUT = 2  # seconds for the readiness probe's database check


def application(health: Health, db: Database | None, registry: CollectorRegistry) -> Starlette:
    def healthz(request: Request) -> JSONResponse:
        stuck = health.stuck_for()
        if stuck is not None:
            return JSONResponse({"status": "stuck", "step_seconds": round(stuck, 1)}, status_code=503)
        return JSONResponse({"status": "ok"})

    def readyz(request: Request) -> JSONResponse:  # sync: Starlette runs it on its thread pool
        problems = {} if health.provider else {"provider": "loading"}
        if db is not None:
            try:
                with db.connect(vector=False, connect_timeout=READY_TIMEOUT) as conn:
                    conn.execute("SELECT 1")
            except (psycopg.Error, ConfigError) as exc:
                problems["database"] = str(exc).strip().splitlines()[0]
        if problems:
            return JSONResponse({"status": "not ready"} | problems, status_code=503)
        return JSONResponse({"status": "ok", "provider": health.provider})

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Mount("/metrics", make_asgi_app(registry))]
    return Starlette(routes=routes)


class Endpoint:
    """Serves an ASGI app on ``host:port`` from a daemon thread."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.address = f"{host}:{port}"
        self._thread = threading.Thread(target=self.server.run, name="syncer-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"cannot serve HTTP on {self.address} (SYNCER_HTTP_HOST, SYNCER_HTTP_PORT)")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=START_SECONDS)

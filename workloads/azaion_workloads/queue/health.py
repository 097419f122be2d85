"""One HTTP port for the kubelet and Prometheus: /healthz, /readyz, /metrics.

It runs in its own thread, so a busy or wedged event loop cannot make the
probes hang; instead /healthz notices that the loop stopped ticking.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from azaion_workloads.queue.metrics import QueueMetrics
from azaion_workloads.queue.state import ConsumerState

log = logging.getLogger(__name__)


class HealthServer:
    def __init__(
        self,
        port: int,
        state: ConsumerState,
        metrics: QueueMetrics,
        host: str = "0.0.0.0",  # noqa: S104 - probes come from the kubelet, not loopback
    ) -> None:
        self.state, self.metrics = state, metrics
        handler = _handler_class(state, metrics)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("health and metrics endpoint listening", extra={"port": self.port})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_class(state: ConsumerState, metrics: QueueMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._probe(state.liveness_problems())
            elif path == "/readyz":
                self._probe(state.readiness_problems())
            elif path == "/metrics":
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _probe(self, problems: list[str]) -> None:
            body = {"ok": not problems, "problems": problems, **state.status_fields()}
            self._send(
                503 if problems else 200,
                (json.dumps(body) + "\n").encode(),
                "application/json",
            )

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # probes every few seconds would drown the log

    return Handler

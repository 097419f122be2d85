"""JSON over HTTPS to the API server, with the credentials kopf's watches use.

The operator reads and writes plain JSON and never uses the official
client's generated models; importing them cost 46 MiB of the operator's
memory, a fifth of it at a thousand runs. One urllib3 pool serves every call.

Credentials: in a pod, the ServiceAccount's token (read again when the
kubelet rotates it) and the cluster CA, at ``KUBERNETES_SERVICE_HOST``; on a
workstation, the current context of the kubeconfig as kopf reads it (CA,
client certificate, token or basic auth; no exec plugins).
"""

from __future__ import annotations

import functools
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import kopf
import urllib3

#: Longest one API call may take (seconds). Without a bound, one stuck connection holds a
#: worker thread, and the periodic resync waiting on it, forever.
REQUEST_TIMEOUT_SECONDS = 60.0
#: Connections kept open to the API server: at least the threads that call it at once in a
#: burst (kopf's workers, the follow-ups, the resync, the queue's wake); each call past it
#: pays a new TLS handshake.
CONNECTION_POOL_SIZE = 32
#: How the operator's own calls show in the API server's audit log (kopf's say ``kopf/...``).
USER_AGENT = "azaion-operator"
#: How often a pod's ServiceAccount token is read again (the kubelet rotates it).
TOKEN_REREAD_SECONDS = 60.0

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, body: str = "") -> None:
        super().__init__(f"({status}) {reason}: {body[:500]}")
        self.status, self.reason, self.body = status, reason, body

    def message(self) -> str:
        """The API server's own words (its Status message), else the HTTP reason."""
        try:
            return json.loads(self.body or "{}").get("message") or self.reason
        except (ValueError, AttributeError):
            return self.reason


def login(service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> kopf.ConnectionInfo:
    """Where the API server is and who the operator is to it; kopf's watches log in the same way."""
    if in_pod(service_account_dir):
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        token_path, namespace_path = service_account_dir / "token", service_account_dir / "namespace"
        return kopf.ConnectionInfo(
            server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
            ca_path=str(service_account_dir / "ca.crt"),
            scheme="Bearer",
            token=token_path.read_text().strip(),
            default_namespace=namespace_path.read_text().strip() if namespace_path.exists() else None,
        )
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    if info is None:
        raise kopf.LoginError("no API server: neither a ServiceAccount token in the pod nor a kubeconfig")
    return info


def in_pod(service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> bool:
    """Whether this process runs in a pod with a ServiceAccount token (else it uses a kubeconfig)."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    return bool(host and port and (service_account_dir / "token").exists())


@dataclass
class ApiClient:
    """One API server, one connection pool, and the headers that say who calls."""

    info: kopf.ConnectionInfo
    token_path: Path | None = None
    #: urllib3's retries: by default a refused connection, and a read of an idempotent call, thrice.
    retries: urllib3.Retry | bool | None = None
    _pool: urllib3.PoolManager = field(init=False)
    _headers: dict[str, str] = field(init=False)
    _token_read: float = field(init=False, default_factory=time.monotonic)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._pool = _pool_for(self.info, self.retries)
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **self.info.as_http_headers()}

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """The decoded JSON of the answer; :class:`ApiError` for an error status."""
        url = self.info.server.rstrip("/") + path + (f"?{urlencode(query)}" if query else "")
        headers = self._current_headers()
        data = None
        if body is not None:
            data, headers = json.dumps(body).encode(), {**headers, "Content-Type": content_type}
        response = self._pool.request(
            method, url, body=data, headers=headers, timeout=urllib3.Timeout(total=REQUEST_TIMEOUT_SECONDS)
        )
        if response.status >= 400:
            raise ApiError(response.status, response.reason or "", response.data.decode(errors="replace"))
        return json.loads(response.data) if response.data else None

    def _current_headers(self) -> dict[str, str]:
        if self.token_path is not None and time.monotonic() - self._token_read >= TOKEN_REREAD_SECONDS:
            with self._lock:
                self._headers["Authorization"] = f"Bearer {self.token_path.read_text().strip()}"
                self._token_read = time.monotonic()
        return self._headers


def _pool_for(info: kopf.ConnectionInfo, retries: urllib3.Retry | bool | None) -> urllib3.PoolManager:
    tls = {"ssl_context": info.as_ssl_context()} if info.server.startswith("https://") else {}
    return urllib3.PoolManager(num_pools=2, maxsize=CONNECTION_POOL_SIZE, retries=retries, **tls)


@functools.cache
def api_client() -> ApiClient:
    return ApiClient(login(), token_path=SERVICE_ACCOUNT_DIR / "token" if in_pod() else None)

"""The operator's HTTP client to the API server, against a real HTTP server on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kopf
import pytest

from azaion_devtools.cluster import OPERATOR_ENTRY
from azaion_operator.kit import apiclient, kube

pytestmark = pytest.mark.unit


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeApiServer:
    """Answers every request with the next scripted (status, body) and records what it was asked."""

    answers: list[tuple[int, dict]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            fake.seen.append(Seen(self.command, self.path, dict(self.headers), self.rfile.read(length)))
            status, body = fake.answers.pop(0) if fake.answers else (200, {})
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _answer

        def log_message(self, *_: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield fake
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def client(server: FakeApiServer, monkeypatch: pytest.MonkeyPatch) -> apiclient.ApiClient:
    api = apiclient.ApiClient(kopf.ConnectionInfo(server=server.url, token="t0"))
    monkeypatch.setattr(kube, "api_client", lambda: api)
    return api


def test_calls_send_json_with_the_token_and_the_operators_user_agent(
    server: FakeApiServer, client: apiclient.ApiClient
) -> None:
    server.answers = [(200, {"status": {"phase": "Queued"}})]
    stored = kube.patch_status("trainingruns", "team-a", "r1", {"phase": "Queued"}, resource_version="42")
    assert stored == {"status": {"phase": "Queued"}}
    (seen,) = server.seen
    assert seen.method == "PATCH"
    assert seen.path == "/apis/ai.azaion.com/v1alpha1/namespaces/team-a/trainingruns/r1/status"
    assert seen.headers["Content-Type"] == "application/merge-patch+json"
    assert seen.headers["Authorization"] == "Bearer t0"
    assert seen.headers["User-Agent"] == apiclient.USER_AGENT
    assert json.loads(seen.body) == {"status": {"phase": "Queued"}, "metadata": {"resourceVersion": "42"}}


def test_an_error_status_is_an_api_error_with_the_servers_own_words(
    server: FakeApiServer, client: apiclient.ApiClient
) -> None:
    refusal = {"kind": "Status", "message": 'Job.batch "r1-1" is invalid: spec.template: Required value'}
    server.answers = [(422, refusal)]
    with pytest.raises(apiclient.ApiError) as refused:
        kube.create({"kind": "Job", "metadata": {"name": "r1-1", "namespace": "team-a"}})
    assert refused.value.status == 422
    assert kube.api_message(refused.value) == refusal["message"]
    assert server.seen[0].path == "/apis/batch/v1/namespaces/team-a/jobs"


def test_a_missing_object_reads_as_none_and_an_existing_one_as_not_created(
    server: FakeApiServer, client: apiclient.ApiClient
) -> None:
    server.answers = [(404, {"kind": "Status", "reason": "NotFound"}), (409, {"kind": "Status"})]
    assert kube.read_job("team-a", "r1-1") is None
    assert kube.create({"kind": "ServiceAccount", "metadata": {"name": "r1", "namespace": "team-a"}}) is False
    assert [s.path for s in server.seen] == [
        "/apis/batch/v1/namespaces/team-a/jobs/r1-1",
        "/api/v1/namespaces/team-a/serviceaccounts",
    ]


def test_a_kind_the_operator_never_creates_is_refused_before_any_call(
    server: FakeApiServer, client: apiclient.ApiClient
) -> None:
    with pytest.raises(ValueError, match="no create for kind Secret"):
        kube.create({"kind": "Secret", "metadata": {"name": "s", "namespace": "team-a"}})
    assert server.seen == []


def test_queries_are_encoded(server: FakeApiServer, client: apiclient.ApiClient) -> None:
    kube.delete_jobs("team-a", "ai.azaion.com/trainingrun=r1")
    assert server.seen[0].method == "DELETE"
    assert server.seen[0].path == (
        "/apis/batch/v1/namespaces/team-a/jobs?propagationPolicy=Background&labelSelector=ai.azaion.com%2Ftrainingrun%3Dr1"
    )


def test_in_a_pod_the_service_account_logs_in_and_its_rotated_token_is_read_again(
    server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("first\n")
    (tmp_path / "namespace").write_text("azaion-system")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = apiclient.login(tmp_path)
    assert (info.server, info.token, info.default_namespace) == ("https://10.96.0.1:443", "first", "azaion-system")
    assert info.ca_path == str(tmp_path / "ca.crt")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    assert apiclient.login(tmp_path).server == "https://[fd00::1]:443"

    monkeypatch.setattr(apiclient, "TOKEN_REREAD_SECONDS", 0.0)
    api = apiclient.ApiClient(kopf.ConnectionInfo(server=server.url, token="first"), token_path=tmp_path / "token")
    api.request("GET", "/api/v1/nodes")
    (tmp_path / "token").write_text("rotated\n")
    api.request("GET", "/api/v1/nodes")
    assert [s.headers["Authorization"] for s in server.seen] == ["Bearer first", "Bearer rotated"]


def test_off_a_pod_without_a_kubeconfig_the_login_error_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kopf.LoginError, match="neither a ServiceAccount token"):
        apiclient.login(tmp_path / "no-such-dir")


def test_the_operator_runs_without_the_kubernetes_client_libraries() -> None:
    """The operator image carries none of them (the host operator of the tests runs the same way)."""
    check = OPERATOR_ENTRY.replace(
        "from azaion_operator.main import main; main()",
        "import azaion_operator.main, azaion_operator.trainingrun.handlers,"
        " azaion_operator.annotationconsumer.handlers;"
        " print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes' and sys.modules[m] is not None))",
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_a_listing_is_read_page_by_page_without_managed_fields(
    server: FakeApiServer, client: apiclient.ApiClient
) -> None:
    def run(name: str) -> dict:
        return {"metadata": {"name": name, "managedFields": [{"manager": "kubectl"}]}}

    server.answers = [
        (200, {"items": [run("a"), run("b")], "metadata": {"continue": "t1"}}),
        (410, {"kind": "Status", "reason": "Expired"}),  # compacted meanwhile: start over
        (200, {"items": [run("a"), run("b")], "metadata": {"continue": "t2"}}),
        (200, {"items": [run("c")], "metadata": {}}),
    ]
    listed = kube.list_resources("trainingruns", page=2)
    assert listed == [{"metadata": {"name": name}} for name in "abc"]
    base = "/apis/ai.azaion.com/v1alpha1/trainingruns?limit=2"
    assert [s.path for s in server.seen] == [base, f"{base}&continue=t1", base, f"{base}&continue=t2"]


def test_a_refused_first_page_is_an_error(server: FakeApiServer, client: apiclient.ApiClient) -> None:
    server.answers = [(410, {"kind": "Status", "reason": "Expired"})]
    with pytest.raises(apiclient.ApiError):
        kube.list_resources("trainingruns")
    assert len(server.seen) == 1

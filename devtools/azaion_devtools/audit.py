"""Counting API calls from the local control plane's audit log.

``hack/cluster.sh up`` starts kube-apiserver with a Metadata-level audit log
(``audit.log`` beside the kubeconfig): one JSON line per request stage, with
its verb, resource and user agent. The operator's own calls say
``azaion-operator`` and kopf's say ``kopf/<version>``, so a benchmark can
count exactly what the operator asked of the API server in a window, whatever
library made the call.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

#: User agents of the operator process: its Kubernetes client and kopf (and the
#: Kubernetes client's default, for operators that do not name themselves; a
#: benchmark that counts with it names its own client otherwise).
OPERATOR_AGENTS = ("azaion-operator", "kopf/", "OpenAPI-Generator/")


class AuditLog:
    """The audit log of one control plane, read from a mark onwards."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def available(self) -> bool:
        return self.path.is_file()

    def mark(self) -> int:
        """Where the log ends now: count from here."""
        return self.path.stat().st_size if self.path.exists() else 0

    def calls_since(
        self, mark: int, namespaces: set[str] | None = None, agents: tuple[str, ...] = OPERATOR_AGENTS
    ) -> Counter[str]:
        """Completed requests from ``agents`` after ``mark``, by ``verb resource[/subresource]``:
        those in ``namespaces`` (when given) and the cluster-wide ones.

        A watch counts once, when it starts (its completion comes much later, or never).
        """
        calls: Counter[str] = Counter()
        with self.path.open("rb") as log:
            log.seek(mark)
            for line in log:
                try:
                    event = json.loads(line)
                except ValueError:  # a line cut off at the end of the file
                    continue
                if not str(event.get("userAgent", "")).startswith(agents):
                    continue
                watch = event.get("verb") == "watch"
                if event.get("stage") != ("ResponseStarted" if watch else "ResponseComplete"):
                    continue
                ref = event.get("objectRef") or {}
                if namespaces is not None and ref.get("namespace") and ref["namespace"] not in namespaces:
                    continue
                resource = ref.get("resource", event.get("requestURI", "?"))
                if ref.get("subresource"):
                    resource += f"/{ref['subresource']}"
                calls[f"{event['verb']} {resource}"] += 1
        return calls

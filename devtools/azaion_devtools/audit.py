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

    def mark(self) -> tuple[int, int]:
        """Where the log ends now (its file and size): count from here."""
        if not self.path.exists():
            return 0, 0
        info = self.path.stat()
        return info.st_ino, info.st_size

    def _since(self, mark: tuple[int, int]) -> list[tuple[Path, int]]:
        """The files and offsets to read after ``mark``: the API server rotates its log
        (``--audit-log-maxsize``), so a long benchmark's calls may start in a backup."""
        inode, offset = mark
        if not self.path.exists():
            return []
        if self.path.stat().st_ino == inode:
            return [(self.path, offset)]
        backups = self.path.parent.glob(f"{self.path.stem}-*{self.path.suffix}")
        rotated = [backup for backup in backups if backup.stat().st_ino == inode]
        return [*((p, offset) for p in rotated), (self.path, 0)]

    def calls_since(
        self, mark: tuple[int, int], namespaces: set[str] | None = None, agents: tuple[str, ...] = OPERATOR_AGENTS
    ) -> Counter[str]:
        """Completed requests from ``agents`` after ``mark``, by ``verb resource[/subresource]``:
        those in ``namespaces`` (when given) and the cluster-wide ones.

        A watch counts once, when it starts (its completion comes much later, or never).
        """
        calls: Counter[str] = Counter()
        for path, offset in self._since(mark):
            self._count(path, offset, namespaces, agents, calls)
        return calls

    @staticmethod
    def _count(
        path: Path, offset: int, namespaces: set[str] | None, agents: tuple[str, ...], calls: Counter[str]
    ) -> None:
        with path.open("rb") as log:
            log.seek(offset)
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

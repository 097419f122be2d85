#!/usr/bin/env bash
# Local Kubernetes control plane without Docker: up | down | env | status.
# See hack/localcluster.py for what it runs and the settings it reads.
exec python3 "$(dirname "${BASH_SOURCE[0]}")/localcluster.py" "$@"

#!/usr/bin/env bash
# The test command: installs what is missing (hack/setup.sh), then runs the
# whole suite, integration tests included. Extra arguments go to pytest, e.g.
#   hack/test.sh -m unit                      only the tests that need no servers
#   hack/test.sh --kubeconfig ~/.kube/config  against an existing cluster
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
hack/setup.sh
exec .venv/bin/pytest "$@"

#!/usr/bin/env bash
# Validates the GitHub Actions workflows (they cannot run here): builds
# actionlint from Go modules once (hack/build-tools.sh) and runs it, with
# checking the run: scripts with ShellCheck when it is installed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
dir="$(hack/build-tools.sh actionlint)"
shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
if [ ${#workflows[@]} -eq 0 ]; then
  echo "no workflow files under .github/workflows" >&2
  exit 1
fi
"$dir/actionlint" -no-color "${workflows[@]}"
echo "actionlint: ${#workflows[@]} workflow file(s) clean"

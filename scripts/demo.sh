#!/usr/bin/env bash
# The main job: brings up a virtual cluster in network namespaces, shows it working, and tears it
# down (checking that nothing is left). Installs what is missing first. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec node dist/demo/main.js "$@"

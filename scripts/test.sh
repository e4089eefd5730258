#!/usr/bin/env bash
# Runs every test: lint, type check (the build), unit tests and integration tests (as root, in
# network namespaces). Installs what is missing first. Under CI=true a skipped test is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

if [ "$(id -u)" != 0 ]; then
  echo "test: integration tests need root; run as root (under CI=true they fail without it)" >&2
fi

npm run --silent lint || { echo "lint: 0 passed, 1 failed"; exit 1; }
npm run --silent typecheck || { echo "typecheck: 0 passed, 1 failed"; exit 1; }

out=$(mktemp)
trap 'rm -f "$out"' EXIT
npx tap "$@" 2>&1 | tee "$out"
status=${PIPESTATUS[0]}

# tap's closing line looks like: # { total: 76, pass: 75, fail: 1, skip: 0 }
summary=$(grep -E '^# \{ total: [0-9]+' "$out" | tail -n 1)
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary"); pass=${pass:-0}
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary"); fail=${fail:-0}
skip=$(sed -nE 's/.*skip: ([0-9]+).*/\1/p' <<<"$summary"); skip=${skip:-0}
todo=$(sed -nE 's/.*todo: ([0-9]+).*/\1/p' <<<"$summary"); todo=${todo:-0}

if [ "${CI:-}" = "true" ] && [ $((skip + todo)) -gt 0 ]; then
  echo "test: $skip skipped and $todo todo tests under CI=true: nothing may be skipped in CI" >&2
  fail=$((fail + skip + todo))
  status=1
fi
if [ "$pass" -eq 0 ]; then
  echo "test: no test ran" >&2
  status=1
fi
echo "tests: $pass passed, $fail failed, $skip skipped"
exit "$status"

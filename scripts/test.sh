#!/usr/bin/env bash
# The whole test suite: setup, then lint (ruff), types (mypy strict) and pytest for the core and
# every plugin package. Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

bash scripts/setup.sh

src_dirs=(src/novacron_sdk)
test_dirs=(tests)
for pyproject in plugins/*/pyproject.toml plugins/*/*/pyproject.toml; do
  [ -f "$pyproject" ] || continue
  dir=$(dirname "$pyproject")
  case "$dir" in *_template*) continue ;; esac
  for pkg in "$dir"/src/*/; do src_dirs+=("${pkg%/}"); done
  [ -d "$dir/tests" ] && test_dirs+=("$dir/tests")
done

echo "== ruff"
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
echo "== mypy (strict)"
"$PYTHON" -m mypy "${src_dirs[@]}"
echo "== pytest"
"$PYTHON" -m pytest "${test_dirs[@]}" "$@"

#!/usr/bin/env bash
# Install everything the tests, the demo and the benchmarks need on a fresh Debian 12 machine
# with Python 3.11: Debian packages (when run as root) and the core plus every plugin package
# in editable mode with their test/lint/docs extras. Safe to run again: it skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

apt_packages=$(grep -v '^\s*#' scripts/apt-packages.txt | tr '\n' ' ')
missing=()
for pkg in $apt_packages; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  # The libvirt tests fetch Debian's kernel with `apt-get download`, which needs package
  # lists even when every package below is already installed (images often ship none).
  if [ ${#missing[@]} -gt 0 ] || ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    apt-get update -qq
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
elif [ ${#missing[@]} -gt 0 ]; then
  echo "setup: not root; tests that need these Debian packages will skip: ${missing[*]}" >&2
fi

# The core first, then every plugin package found by glob (never the template).
packages=(-e ".[test,lint,docs]")
for pyproject in plugins/*/pyproject.toml plugins/*/*/pyproject.toml; do
  [ -f "$pyproject" ] || continue
  dir=$(dirname "$pyproject")
  case "$dir" in *_template*) continue ;; esac
  if grep -q '^test = ' "$pyproject"; then packages+=(-e "$dir[test]"); else packages+=(-e "$dir"); fi
done
echo "setup: pip install ${packages[*]}"
"$PYTHON" -m pip install --disable-pip-version-check -q "${packages[@]}"

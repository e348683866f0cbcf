#!/usr/bin/env bash
# Check that the lower bounds in pyproject.toml are true: install the package with the lowest version of every
# direct dependency (uv --resolution lowest-direct) into a fresh virtual environment and run the test suite there.
#
# Usage: scripts/check_lowest_deps.sh [VENV_DIR]   (default /tmp/histoseg-lowest; it is deleted and recreated)
# Env:   PYTHON  the interpreter for the venv (default python3.11; requires-python is >=3.11)
#
# uv reads PyPI directly, so on Linux torch comes as the CUDA build with its nvidia-* wheels (several GB).
# Not part of CI: run it by hand after changing dependency bounds.
set -euo pipefail

venv="${1:-/tmp/histoseg-lowest}"
python="${PYTHON:-python3.11}"
cd "$(dirname "$0")/.."

if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
    echo "$venv exists and is not a virtual environment; not deleting it" >&2
    exit 2
fi
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q uv

# lowest-direct: the lowest version allowed for each requirement named in pyproject.toml (the package's own
# dependencies and the testing extra); their dependencies still resolve to the newest compatible versions.
"$venv/bin/uv" pip install --python "$venv/bin/python" --resolution lowest-direct -e ".[testing]"

echo "--- installed versions"
"$venv/bin/uv" pip freeze --python "$venv/bin/python"

# The lowest ruff must accept the code as CI lints it.
echo "--- lint"
"$venv/bin/ruff" check --no-cache src tests benchmarks scripts
"$venv/bin/ruff" format --no-cache --check src tests benchmarks scripts

# Qt tests run headless: pytest-xvfb starts Xvfb (leave QT_QPA_PLATFORM unset).
echo "--- tests"
"$venv/bin/python" -m pytest -q -p no:cacheprovider

# Sourced by scripts/demo and scripts/test: a project venv with torch==2.13.0 installed first.
# torch goes in alone and pinned: a bare "torch" requirement on a machine without torch would
# resolve to the registry's newest CUDA build (several GB). With 2.13.0 present, the package's
# permissive torch range is already satisfied and pip installs nothing more for it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${S3EXCHANGE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"

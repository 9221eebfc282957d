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
# pip takes ~7 s even when everything is installed, so it runs only when something is missing.
if ! "$VENV/bin/python" -c 'import importlib.metadata as m, sys
sys.exit(m.version("torch").split("+")[0] != "2.13.0")' 2>/dev/null; then
    "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
fi

# _install_stamp check|write EXTRAS: a stamp in the venv records an install of this checkout
# with EXTRAS from this pyproject.toml (its hash); "check" also wants pip's recorded version to
# be the package's __version__, so an uninstall or a version bump is reinstalled.
_install_stamp() {
    "$VENV/bin/python" - "$1" "$ROOT" "$2" "$VENV/.s3exchange-install-${2//,/-}" <<'PY'
import hashlib, importlib.metadata, pathlib, re, sys
mode, root, extras, stamp = sys.argv[1:]
pyproject = pathlib.Path(root, "pyproject.toml").read_bytes()
want = f"{hashlib.sha256(pyproject).hexdigest()} {extras} {root}\n"
path = pathlib.Path(stamp)
if mode == "write":
    path.write_text(want)
    sys.exit(0)
try:
    installed = importlib.metadata.version("s3exchange")
except importlib.metadata.PackageNotFoundError:
    sys.exit(1)
# the version is written once, in the package (pyproject reads it dynamically)
init = pathlib.Path(root, "s3exchange", "__init__.py").read_text()
version = re.search(r'^__version__ = "([^"]+)"', init, re.M)
sys.exit(not (path.is_file() and path.read_text() == want and version and installed == version[1]))
PY
}

# install_project EXTRAS: pip install -e "$ROOT[EXTRAS]", skipped when the stamp says it is done
# (S3EXCHANGE_REINSTALL=1 forces it).
install_project() {
    if [ "${S3EXCHANGE_REINSTALL:-0}" != 1 ] && _install_stamp check "$1"; then
        return 0
    fi
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$1]"
    _install_stamp write "$1"
}

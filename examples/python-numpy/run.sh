#!/usr/bin/env bash
# The numpy example: makes examples/python-numpy/.venv with numpy and the shmlink Python
# package (from peers/python) the first time, then runs parent.js. Needs the Node package
# built (npm install at the repository's root does that). `rm -rf .venv` here to refresh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$here/.venv"
python=${PYTHON:-python3}

[ -f "$root/index.js" ] || { echo "run.sh: build the Node package first: npm install (at $root)" >&2; exit 1; }
if ! "$venv/bin/python" -c 'import numpy, shmlink' 2>/dev/null; then
    echo "run.sh: making $venv with numpy and shmlink (once)"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy "$root/peers/python"
fi
exec node "$here/parent.js"

#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs fastdata
# with its development extras. Sourced by scripts/test and scripts/demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
stamp="$venv/.fastdata-installed"
want="$(cat "$root/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/pip" install -q --upgrade pip
    # torch and torchvision are pinned to the CPU-capable builds this platform provides.
    "$venv/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1"
    "$venv/bin/pip" install -q -e "$root[dev]"
    echo "$want" > "$stamp"
fi
export PATH="$venv/bin:$PATH"

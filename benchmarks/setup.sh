#!/usr/bin/env bash
# Creates .venv-bench (beside .venv, at the repository root) with bridge-core and the two peers it is
# measured against: TransformerLens 4.3 and nnsight 0.8. Idempotent: re-running only checks.
# torch and transformers are pinned by a constraint file so no peer can pull another build
# (an unconstrained torch resolves to a multi-GB CUDA wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$PWD/.venv-bench"
PY=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
CONSTRAINTS=$(mktemp)
trap 'rm -f "$CONSTRAINTS"' EXIT
printf 'torch==2.13.0\ntransformers==5.24.0\n' >"$CONSTRAINTS"

# Checked from outside the repository: its bridge_core.egg-info would otherwise look installed.
have() { (cd / && "$VENV/bin/python" - "$@") <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for spec in sys.argv[1:]:
    name, _, want = spec.partition("==")
    try:
        got = version(name)
    except PackageNotFoundError:
        ok = False; continue
    if want and not got.startswith(want):
        ok = False
sys.exit(0 if ok else 1)
PY
}

# torch first, on its own, so every later resolve sees it satisfied.
have torch==2.13.0 || $PIP install torch==2.13.0
have bridge-core && (cd / && "$VENV/bin/python" -c "import bridge_core") 2>/dev/null || $PIP install -c "$CONSTRAINTS" -e .
have transformer-lens==4.3.0 || $PIP install -c "$CONSTRAINTS" transformer-lens==4.3.0
have nnsight==0.8 || $PIP install -c "$CONSTRAINTS" "nnsight>=0.8,<0.9"
have py-spy || $PIP install py-spy
have torch==2.13.0 transformers==5.24.0 || { echo "setup.sh: torch/transformers drifted from the pins" >&2; exit 1; }
# Byte-compile once: with PYTHONDONTWRITEBYTECODE set (as on these machines) every worker process
# would otherwise recompile torch and transformers, ~15 s of import per process.
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
[ -f "$VENV/.compiled" ] || { "$VENV/bin/python" -m compileall -q -j 0 "$SITE" >/dev/null 2>&1 || true; touch "$VENV/.compiled"; }
(cd / && "$VENV/bin/python" -) <<'PY'
from importlib.metadata import version
for name in ("torch", "transformers", "bridge-core", "transformer-lens", "nnsight", "py-spy"):
    print(f"{name:18s}{version(name)}")
PY
echo "ready: source .venv-bench/bin/activate && python benchmarks/run.py --quick"

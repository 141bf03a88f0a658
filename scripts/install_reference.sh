#!/usr/bin/env bash
# Install the TransformerLens 3.9 HookedTransformer reference used by
# tests/reference/ into .reference/tl39, isolated from the active venv.
#
# Usage (with the project venv active): scripts/install_reference.sh
# Idempotent: does nothing when the pinned set is already installed.
#
# Every package is installed with --no-deps into a --target directory, so pip
# never resolves (or downloads) torch, transformers or anything else; torch,
# transformers, numpy, einops, huggingface_hub, ... come from the active venv.
# The extra packages below are exactly what `import transformer_lens` (3.9)
# needs at import time on top of the venv: TL's package __init__ imports
# `datasets` (-> pyarrow, pandas, dill, multiprocess, xxhash) and `pandas`
# unconditionally, so they cannot be avoided without stubbing modules. TL's
# other declared deps (accelerate, beartype, fancy-einsum, typeguard, wandb,
# sentencepiece, protobuf, transformers-stream-generator) are never imported
# on the HookedTransformer path; jaxtyping's wadler-lindig only lazily.
#
# Note: if a transformer-lens (4.x) is installed in the venv it shadows this
# copy (the dir goes at the END of sys.path); the smoke test below then fails.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${repo_root}/.reference/tl39"
python="${PYTHON:-python}"

# Exact pins; pip applies the environment markers, so one list serves every supported Python.
packages=(
  "transformer-lens==3.9.0"
  "better-abc==0.0.3"
  "datasets==5.2.0"
  "dill==0.4.1"
  "multiprocess==0.70.19"
  "xxhash==4.1.0"
  # Python >= 3.11 (tested: 3.11; wheels exist for 3.12-3.14)
  "jaxtyping==0.3.11; python_version >= '3.11'"
  "pyarrow==26.0.1; python_version >= '3.11'"
  "pandas==3.1.1; python_version >= '3.11'"
  "python-dateutil==4.0.0; python_version >= '3.11'"
  # Python 3.10: the versions above need >= 3.11; pandas 2.x also needs pytz/tzdata, dateutil 2.x six
  "jaxtyping==0.3.7; python_version < '3.11'"
  "pyarrow==25.0.1; python_version < '3.11'"
  "pandas==2.3.3; python_version < '3.11'"
  "python-dateutil==2.9.0.post0; python_version < '3.11'"
  "six==1.17.0; python_version < '3.11'"
  "pytz==2026.6; python_version < '3.11'"
  "tzdata==2026.6; python_version < '3.11'"
)

# The stamp records the interpreter too: pyarrow, pandas, xxhash and multiprocess wheels are per-Python.
stamp="${target}/.installed"
interpreter="$("${python}" -c 'import sys, sysconfig; print(sys.implementation.cache_tag, sysconfig.get_platform())')"
wanted="$(printf '%s\n' "${interpreter}" "${packages[@]}")"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${wanted}" ]]; then
  echo "reference already installed in ${target}"
  exit 0
fi

rm -rf "${target}"
mkdir -p "${target}"
"${python}" -m pip install --quiet --disable-pip-version-check \
  --no-deps --no-compile --target "${target}" "${packages[@]}"

# Smoke test with the reference dir appended (not prepended) to sys.path, as
# tests/reference/hooked_transformer.py does.
"${python}" - "${target}" <<'PY'
import sys

sys.path.append(sys.argv[1])
import transformer_lens
from transformer_lens import HookedTransformer  # noqa: F401

assert transformer_lens.__file__.startswith(sys.argv[1]), (
    f"transformer_lens imported from {transformer_lens.__file__}, which shadows the reference"
)
PY

printf '%s\n' "${wanted}" > "${stamp}"
echo "installed reference into ${target}"

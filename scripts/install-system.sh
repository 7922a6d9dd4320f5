#!/usr/bin/env bash
# Installs the Debian packages that the tests and the demo use, once.
# Safe to run again: packages already present are skipped, so a second run is quick.
set -euo pipefail

packages=(
  fuse3 libfuse3-dev pkg-config   # FUSE mounts and the pyfuse3 build
  gcc libgmp-dev                  # builds of C extensions: libp2p's fastecdsa needs GMP
  curl                            # tests query unix-socket APIs
  attr                            # setfattr/getfattr for xattr round trips
  zstd gzip tar                   # layer compressions
  docker-registry skopeo umoci    # a real Distribution registry and OCI tools
  postgresql                      # the supernode's larger database
  squashfs-tools                  # mksquashfs, a benchmark peer
  docker-compose                  # validates docker-compose.yml (no engine needed)
)

missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system: missing Debian packages (${missing[*]}); run as root to install them" >&2
  exit 1
fi

echo "install-system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts services on install; the tests start their own on loopback.
systemctl disable --now docker-registry postgresql >/dev/null 2>&1 || true
service docker-registry stop >/dev/null 2>&1 || true
service postgresql stop >/dev/null 2>&1 || true

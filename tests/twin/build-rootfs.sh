#!/usr/bin/env bash
# Builds the droplet twin's pristine root file system, once, into CACHE_DIR (tests/twin/cache.py
# names it: its key is this script's hash). Nothing is installed on the machine: debootstrap and
# systemd-nspawn run from .debs extracted into the cache, trixie's lists live in a private apt
# configuration there, and everything else happens inside the new root.
#
# CACHE_DIR gets:
#   tools/           bookworm's debootstrap, systemd-nspawn and libsystemd-shared, extracted
#   rootfs/          Debian bookworm (systemd 252, sshd, cloud-init) standing in for Ubuntu's
#                    droplet image; /srv/apt holds the packages the host scripts install, under
#                    Ubuntu's names (trixie's Docker 26, Compose v2, buildx; bookworm's runc and
#                    certbot, publicTls's ACME client)
#   images/registry, images/nginx   trees laid out as the official images are (Debian's
#                    docker-registry and nginx, busybox sh and wget), for tests/twin/hub.py
# Usage: build-rootfs.sh CACHE_DIR   (as root; needs deb.debian.org)
set -euo pipefail

cache="$1"
mirror=http://deb.debian.org/debian
work="${cache}.build"
rm -rf "$work"
mkdir -p "$work"/{apt/lists/partial,apt/cache/archives/partial,debs,tools,images}

log() { printf '==> twin rootfs: %s (%ss)\n' "$*" "$SECONDS"; }

# A private apt configuration: the machine's own sources, lists and cache stay as they are.
cat >"$work/apt/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main
SOURCES
apt_private=(-o "Dir::Etc::sourcelist=$work/apt/sources.list" -o Dir::Etc::sourceparts=-
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o Debug::NoLocking=1
  -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root)
log "package lists (bookworm, trixie)"
apt-get "${apt_private[@]}" -q update >/dev/null

log "tools"
(cd "$work/debs" && apt-get "${apt_private[@]}" -q download debootstrap/bookworm \
  systemd-container/bookworm systemd/bookworm busybox-static/bookworm nginx/bookworm \
  nginx-common/bookworm docker-registry/bookworm >/dev/null)
for deb in debootstrap systemd-container systemd; do
  dpkg-deb -x "$work"/debs/"${deb}"_*.deb "$work/tools"
done

log "debootstrap bookworm"
rootfs="$work/rootfs"
unshare -m --propagation private env DEBOOTSTRAP_DIR="$work/tools/usr/share/debootstrap" \
  "$work/tools/usr/sbin/debootstrap" --variant=minbase \
  --include=systemd,systemd-sysv,dbus,openssh-server,iproute2,ca-certificates,curl,python3,python3-cffi-backend,e2fsprogs,openssl,procps,netbase,cloud-init,apt-utils,less,kmod,iptables \
  bookworm "$rootfs" "$mirror" >"$work/debootstrap.log"

log "the local apt repository (Docker from trixie, runc and certbot from bookworm)"
(cd "$work/debs" && apt-get "${apt_private[@]}" -q download docker.io/trixie docker-cli/trixie \
  docker-compose/trixie docker-buildx/trixie containerd/trixie >/dev/null)
mkdir -p "$rootfs/srv/apt" "$rootfs/tmp/docker-debs"
cp "$work"/debs/{docker.io,docker-cli,docker-compose,docker-buildx,containerd}_*.deb "$rootfs/tmp/docker-debs/"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
unshare -m --propagation private chroot "$rootfs" /bin/bash -euo pipefail -c '
  mount -t proc proc /proc
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q update >/dev/null
  apt-get clean
  # What `apt-get install docker.io docker-compose-v2 docker-buildx certbot` needs beyond the
  # image: downloaded, not installed (the host scripts install it).
  apt-get -q install -y --download-only --no-install-recommends /tmp/docker-debs/*.deb runc tini \
    certbot >/dev/null
  mv /var/cache/apt/archives/*.deb /tmp/docker-debs/*.deb /srv/apt/
  # Ubuntu names the `docker compose` plugin docker-compose-v2: a thin package depending on Debian'"'"'s.
  mkdir -p /tmp/thin/DEBIAN
  printf "%s\n" "Package: docker-compose-v2" "Version: 2.26.1-twin1" "Architecture: all" \
    "Maintainer: twin <twin@localhost>" "Depends: docker-compose" \
    "Description: Ubuntu'"'"'s name for the docker compose plugin (droplet twin)" >/tmp/thin/DEBIAN/control
  dpkg-deb --build /tmp/thin /srv/apt/docker-compose-v2_2.26.1-twin1_all.deb >/dev/null
  # Ubuntu'"'"'s docker.io brings the `docker` command; trixie split it into docker-cli.
  dpkg-deb --raw-extract /srv/apt/docker.io_*.deb /tmp/engine
  sed -i "s/^Depends: /Depends: docker-cli, /" /tmp/engine/DEBIAN/control
  rm /srv/apt/docker.io_*.deb
  dpkg-deb -Zgzip -z1 --build /tmp/engine /srv/apt/ >/dev/null
  rm -rf /tmp/engine
  (cd /srv/apt && apt-ftparchive packages . >Packages)
  rm -rf /tmp/thin /tmp/docker-debs
  apt-get clean
  rm -rf /var/lib/apt/lists/*
  umount /proc'
rm -f "$rootfs/etc/apt/sources.list"
echo 'deb [trusted=yes] file:/srv/apt ./' >"$rootfs/etc/apt/sources.list.d/twin.list"

log "droplet configuration"
# Ubuntu's image has en_US.UTF-8, which cloud-init's locale module sets.
echo 'en_US.UTF-8 UTF-8' >"$rootfs/etc/locale.gen"
chroot "$rootfs" locale-gen >/dev/null
# No DNS server in the twin: a lookup fails at once instead of waiting for a timeout.
printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$rootfs/etc/resolv.conf"
# cloud-init: NoCloud (tests/twin/droplets.py writes the seed per droplet), networking left to the
# twin (its interfaces are configured from outside, as DigitalOcean's are by its agent),
# root logs in with the droplet's key as on DigitalOcean.
cat >"$rootfs/etc/cloud/cloud.cfg.d/90-twin.cfg" <<'CFG'
datasource_list: [NoCloud]
network: {config: disabled}
disable_root: false
users: []
CFG
: >"$rootfs/etc/machine-id"
rm -f "$rootfs"/etc/ssh/ssh_host_*
install -D -m 0755 "$(dirname "$0")/twin-volumes" "$rootfs/usr/local/sbin/twin-volumes"
install -m 0644 "$(dirname "$0")/twin-volumes.service" "$rootfs/etc/systemd/system/"
chroot "$rootfs" systemctl enable twin-volumes.service >/dev/null 2>&1
chroot "$rootfs" systemctl mask console-getty.service getty@tty1.service apt-daily.timer \
  apt-daily-upgrade.timer systemd-networkd-wait-online.service >/dev/null 2>&1

log "image trees (official layouts from Debian's docker-registry, nginx, busybox)"
extract() { mkdir -p "$2" && dpkg-deb -x "$work"/debs/"$1"_*.deb "$2"; }
# Copies the shared libraries BINARY (a path inside the rootfs) needs into TREE.
copy_libraries() {
  chroot "$rootfs" ldd "$1" | grep -o '/[^ ]*' | while read -r library; do
    install -D "$rootfs$library" "$2$library"
  done
}
add_busybox() {
  install -D "$work/busybox/bin/busybox" "$1/bin/busybox"
  for applet in sh wget cat ls; do ln -sf busybox "$1/bin/$applet"; done
  install -D -m 0644 "$rootfs/etc/ssl/certs/ca-certificates.crt" "$1/etc/ssl/certs/ca-certificates.crt"
  mkdir -p "$1/tmp" "$1/run" "$1/var" && chmod 1777 "$1/tmp"
  ln -s /run "$1/var/run"  # as in the official (Alpine) images
}
extract busybox-static "$work/busybox"
registry="$work/images/registry"
extract docker-registry "$work/docker-registry"
install -D "$work/docker-registry/usr/bin/docker-registry" "$registry/bin/registry"
cp "$registry/bin/registry" "$rootfs/tmp/registry" && copy_libraries /tmp/registry "$registry" && rm "$rootfs/tmp/registry"
mkdir -p "$registry/etc/distribution" "$registry/var/lib/registry"
add_busybox "$registry"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$registry/etc/passwd"
printf 'root:x:0:\n' >"$registry/etc/group"
nginx="$work/images/nginx"
extract nginx "$work/nginx" && extract nginx-common "$work/nginx"
install -D "$work/nginx/usr/sbin/nginx" "$nginx/usr/sbin/nginx"
cp "$nginx/usr/sbin/nginx" "$rootfs/tmp/nginx" && copy_libraries /tmp/nginx "$nginx" && rm "$rootfs/tmp/nginx"
install -D -m 0644 "$work/nginx/etc/nginx/mime.types" "$nginx/etc/nginx/mime.types"
mkdir -p "$nginx"/{var/cache/nginx,var/log/nginx,var/lib/nginx,etc/nginx/conf.d}
add_busybox "$nginx"
printf 'root:x:0:0:root:/root:/bin/sh\nnginx:x:101:101:nginx:/nonexistent:/bin/false\n' >"$nginx/etc/passwd"
printf 'root:x:0:\nnginx:x:101:\n' >"$nginx/etc/group"

rm -rf "$work/apt" "$work/debs" "$work/busybox" "$work/docker-registry" "$work/nginx" \
  "$work"/tools/usr/share/{doc,man,locale}
rm -rf "$cache"
mv "$work" "$cache"
log "done: $(du -sh "$cache" | cut -f1)"

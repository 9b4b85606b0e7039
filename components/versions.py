"""Everything that runs on the hosts, pinned in one place.

Container images are pinned by tag AND digest (`name:tag@sha256:...`): the digest is the one the
runtime pulls, so what a droplet runs can never change under the same config, and the tag says
which release it is. Each digest is the multi-arch index digest published by Docker's official
images in docker-library/repo-info (repos/<image>/remote/<tag>.md, commit named below).
Debian/Ubuntu packages are pinned by name to the archive of the pinned droplet image (Ubuntu
24.04 LTS): its `-updates` and `-security` pockets keep only the newest build of a package, so an
exact version pin would break every install the day Ubuntu ships a security fix. Bump the image
and the pins here, nowhere else, and re-check the advisories listed in the README.
"""

UBUNTU_IMAGE = "ubuntu-24-04-x64"

# distribution v3 reads /etc/distribution/config.yml; a config at the v2 path is ignored.
# 3.1.1 fixes CVE-2026-41888 (tag deletes ignored storage.delete.enabled: false) and includes
# 3.1.0's fix for CVE-2026-35172 (deleted blobs readable through a stale Redis cache).
# Digest: docker-library/repo-info repos/registry/remote/3.1.1.md at 38feaf4cf947.
REGISTRY_IMAGE = (
    "registry:3.1.1@sha256:849b7d29920d060df8091770ede2279c07924ecd29e2a4c029ee0b5ea2ea542b"
)
# Where the image reads its config (the v3 path).
REGISTRY_CONFIG_FILE = "/etc/distribution/config.yml"
# The image's public CA bundle (its Dockerfile: `apk add --no-cache ca-certificates`).
REGISTRY_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# nginx:alpine verifies every htpasswd scheme the program may write ({SSHA}, $apr1$, bcrypt);
# Debian-based nginx images fail on bcrypt.
# 1.30.5 has every fix of the 2026 nginx advisories (CVE-2026-42945, -9256, -42926, -42946,
# -42934, -40460, -40701 in 1.30.1/1.30.2; CVE-2026-42530, -42055 in 1.30.3).
# Digest: docker-library/repo-info repos/nginx/remote/1.30.5-alpine.md at 35d0d2e1b833.
NGINX_IMAGE = (
    "nginx:1.30.5-alpine@sha256:0985e772fb9f729e6fa0980da05fca5d9c468e870eed43071545afa9d2e27d94"
)
# Numeric uid/gid of the image's `nginx` user (its Dockerfile: `addgroup -g 101 -S nginx`).
NGINX_WORKER_GID = 101

# Ubuntu archive packages: Docker Engine, the `docker compose` plugin, and buildx for the
# client's `docker build` of its proof image; python3 (already in the image: cloud-init runs on
# it) for the registry host's request counter. No third-party apt repository is needed.
REGISTRY_HOST_PACKAGES = ("docker.io", "docker-compose-v2", "curl", "python3")
CLIENT_HOST_PACKAGES = ("docker.io", "docker-buildx", "ca-certificates")
# publicTls: the ACME client, from the same archive: Ubuntu 24.04 ships certbot 2.9.0-1 (seen in
# noble install logs: "Unpacking certbot (2.9.0-1)"); Debian 12, where the tests run it against
# pebble, 2.1.0. ACME Renewal Information (ARI) came in certbot 4.1.0 (its changelog), so neither
# has it: registry-acme.sh renews with a third of the lifetime left. The package's own
# certbot.timer renews /etc/letsencrypt only, where this stack keeps nothing.
ACME_CLIENT_PACKAGES = ("certbot",)

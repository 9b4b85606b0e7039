"""Everything that runs on the hosts, pinned in one place.

Container images are pinned by exact tag. Debian/Ubuntu packages are pinned by name to the
archive of the pinned droplet image (Ubuntu 24.04 LTS): its `-updates` and `-security` pockets
keep only the newest build of a package, so an exact version pin would break every install the
day Ubuntu ships a security fix. Bump the image and the tags here, nowhere else.
"""

UBUNTU_IMAGE = "ubuntu-24-04-x64"

# distribution v3 reads /etc/distribution/config.yml; a config at the v2 path is ignored.
REGISTRY_IMAGE = "registry:3.0.0"

# nginx:alpine verifies every htpasswd scheme the program may write ({SSHA}, $apr1$, bcrypt);
# Debian-based nginx images fail on bcrypt. Numeric uid/gid of the image's `nginx` user:
NGINX_IMAGE = "nginx:1.30.6-alpine"
NGINX_WORKER_GID = 101

# Ubuntu archive packages: Docker Engine, the `docker compose` plugin, and buildx for the
# client's `docker build` of its proof image. No third-party apt repository is needed.
REGISTRY_HOST_PACKAGES = ("docker.io", "docker-compose-v2", "curl")
CLIENT_HOST_PACKAGES = ("docker.io", "docker-buildx", "ca-certificates")

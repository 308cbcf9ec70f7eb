# Prometheus from Debian's package, for hosts that cannot pull prom/prometheus from a registry
# (docker-compose.no-registry.yml builds it; the build context is the repository root).
# Same flags and paths as the prom/prometheus image: the config at
# /etc/prometheus/prometheus.yml (mounted by compose), the data in /prometheus, uid 65534.
#
#   docker build -f deploy/prometheus/debian.Dockerfile --build-arg BASE_IMAGE=debian:bookworm .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY deploy/docker/build-ca.sh /usr/local/lib/r3/build-ca.sh
# policy-rc.d: the package's scripts must not start a service inside the build.
# DL3008: the release's package (the base image pins the Debian release).
# hadolint ignore=DL3008
RUN --mount=type=secret,id=ca_bundle \
    . /usr/local/lib/r3/build-ca.sh \
    && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d \
    && chmod +x /usr/sbin/policy-rc.d \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d \
    && install -d -o nobody -g nogroup /prometheus \
    && /usr/bin/prometheus --version
USER 65534:65534
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]

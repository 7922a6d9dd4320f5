# nydus-mesh in a container: every tool (supernode, dfdaemon, nydusd, nydus-image, nydusify)
# in one Python virtual environment on Debian 12, with FUSE 3 for mounts.
#
# Two final targets set the entrypoint; docker-compose.yml builds both:
#   docker build --target supernode -t nydus-mesh/supernode .
#   docker build --target dfdaemon  -t nydus-mesh/dfdaemon .   (the default: last stage)
# A dfdaemon that mounts images needs `--device /dev/fuse --cap-add SYS_ADMIN`.

ARG DEBIAN=debian:12-slim

# --- build: compile the wheels that need it (pyfuse3 against libfuse3, libp2p's fastecdsa
#     against GMP) into /opt/nydus-mesh
FROM ${DEBIAN} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev libfuse3-dev libgmp-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/nydus-mesh \
 && /opt/nydus-mesh/bin/pip install --no-cache-dir --upgrade pip
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY rafs ./rafs
COPY fuse ./fuse
COPY peer ./peer
COPY supernode ./supernode
COPY migrations ./migrations
RUN /opt/nydus-mesh/bin/pip install --no-cache-dir '.[fuse]'

# --- base: the runtime (no compiler), the venv copied from the build stage
FROM ${DEBIAN} AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 fuse3 libfuse3-3 curl ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/nydus-mesh /opt/nydus-mesh
ENV PATH=/opt/nydus-mesh/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# --- supernode: the scheduler (SQLite in the volume unless --db names PostgreSQL)
FROM base AS supernode
VOLUME /var/lib/supernode
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8002/healthz || exit 1
ENTRYPOINT ["tini", "--", "supernode"]
CMD ["serve", "--listen", "0.0.0.0:8002", "--db", "/var/lib/supernode/supernode.db"]

# --- dfdaemon: a peer (or a seed with --seed): chunk server, mesh fetcher, FUSE mounts
FROM base AS dfdaemon
VOLUME /var/lib/dfdaemon
EXPOSE 65001
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD curl -fsS http://127.0.0.1:65001/healthz || exit 1
ENTRYPOINT ["tini", "--", "dfdaemon"]
CMD ["--supernode", "http://supernode:8002", "--listen", "0.0.0.0:65001", "--data-dir", "/var/lib/dfdaemon"]

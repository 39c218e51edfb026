# syntax=docker/dockerfile:1
#
# pgtrace and the example service in one small image.
#
#   docker build -t pgtrace:dev --build-arg VERSION=$(git describe --always) .
#   docker run --rm -p 6432:6432 -e PGTRACE_UPSTREAM=db:5432 pgtrace:dev
#
# The admin server (9187) stays on the container's loopback unless given a
# token, as everywhere: to reach it from outside, add
#   -p 9187:9187 -e PGTRACE_ADMIN_LISTEN=0.0.0.0:9187 -e PGTRACE_ADMIN_TOKEN=$(openssl rand -hex 32)
# (or PGTRACE_ADMIN_TOKEN_FILE naming a mounted secret).
#
# pg_query_go links libpg_query statically but needs cgo, so the build stage
# compiles with CGO_ENABLED=1 and the binaries need glibc at run time. The
# build and runtime stages are both Debian 12 (bookworm): a binary built
# against a newer glibc (e.g. a trixie build image) would not start on
# distroless/cc-debian12. Change both stages together.

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=1 GOFLAGS=-buildvcs=false
# Dependencies first, so that a source change does not refetch modules.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/pgtrace ./cmd/pgtrace && \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/partners ./examples/partners

# distroless/cc: glibc, libgcc, CA certificates and tzdata; no shell, no
# package manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/pgtrace /out/partners /usr/local/bin/
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# In a container the proxy must listen on all interfaces. The admin server
# stays on loopback, where it needs no token and the HEALTHCHECK reaches
# it: pgtrace refuses any other address without --admin-token
# (PGTRACE_ADMIN_TOKEN or PGTRACE_ADMIN_TOKEN_FILE), see above.
ENV PGTRACE_LISTEN=0.0.0.0:6432 \
    PGTRACE_ADMIN_LISTEN=127.0.0.1:9187 \
    PGTRACE_LOG_FORMAT=json
# 6432: PostgreSQL protocol (point the application's DSN here).
# 9187: admin HTTP (/healthz, /readyz, /metrics, /api/*, /), once it listens
#       beyond loopback with a token.
EXPOSE 6432 9187
# `pgtrace health` GETs /healthz on --admin-listen (PGTRACE_ADMIN_LISTEN)
# and exits 0 or 1; the image has no curl. It checks liveness only:
# readiness (/readyz, upstream reachable) is for orchestrators.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/pgtrace", "health"]
ENTRYPOINT ["/usr/local/bin/pgtrace"]
CMD ["serve"]

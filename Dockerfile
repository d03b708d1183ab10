# syntax=docker/dockerfile:1
# The cachemachine image: one static binary on distroless, for people with Docker: `make
# image-docker`. `make image` builds the same image without Docker (internal/mkimage).
#
# The agent runs as root (uid 0) on purpose, so the base is distroless/static (root), not
# its :nonroot variant: the containerd CRI socket it talks to is root:root mode 0660, and
# the host dirs it writes (state, debug socket) are root's. The DaemonSet adds the rest of
# the least privilege (read-only root filesystem, no capabilities, no privilege escalation,
# seccomp RuntimeDefault): see manifests/base/daemonset.yaml.

FROM golang:1.26 AS build
WORKDIR /src
# Modules in their own layer, rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /cachemachine ./cmd/cachemachine

FROM gcr.io/distroless/static-debian12
COPY --from=build /cachemachine /cachemachine
USER 0:0
ENTRYPOINT ["/cachemachine"]
CMD ["agent", "--config", "/etc/cachemachine/config.yaml"]

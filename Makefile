SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# make image: the commit and its time make the image reproducible (same commit, same digest).
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
# make image IMAGE=REGISTRY/cachemachine:TAG also pushes there (Docker credentials of the machine).
IMAGE ?=
BIN := bin/cachemachine
ARGS ?=

.PHONY: build test deps lint fmt tidy demo bench bench-pull bench-sources bench-cluster bench-freshness faults manifests-check image clean image-docker k8s-lab

build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/cachemachine

deps:
	./scripts/install-deps.sh

# The lab Kubernetes (internal/k8slab): built from the Go module proxy once, 5–15 minutes on
# a fresh 2-core machine, and cached in ~/.cache/cachemachine; seconds afterwards. Before the
# tests, so that the first build is not inside a test's timeout.
k8s-lab:
	go run ./internal/k8slab/cmd/k8slab build

# Everything: real containerd and docker-registry end-to-end tests included, and the
# manifests and Helm chart deployed on a real single-node Kubernetes.
test: deps k8s-lab lint
	go test -race -count=1 -timeout 12m ./...

lint:
	go vet ./...
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }

fmt:
	gofmt -w $$(git ls-files '*.go')

tidy:
	go mod tidy

# Built, not `go run`, so that Ctrl-C ends with the demo's own exit status.
demo: deps build
	go build -o bin/demo ./internal/demo
	bin/demo $(ARGS)

bench: bench-pull bench-sources bench-cluster bench-freshness

# Agent pulls vs direct CRI pulls (serial and parallel) on real containerd and registry.
bench-pull: deps
	go run ./internal/bench/pull $(ARGS)

bench-sources:
	go run ./internal/bench/sources $(ARGS)

bench-cluster: deps build
	go run ./internal/bench/cluster $(ARGS)

# Push -> cached on every node and in /available: Pub/Sub (the emulator where installed),
# registry notifications, and polling, on real containerd nodes with the built agent.
bench-freshness: deps build
	go run ./internal/bench/freshness $(ARGS)

# Fault injection on the lab (real containerd and docker-registry, the built agent): one
# table of scenarios with PASS/FAIL, exit status 1 if any failed; under 10 minutes.
faults: deps build
	go run ./internal/faults $(ARGS)

manifests-check: deps k8s-lab
	go test -count=1 ./manifests/...

# The agent's OCI image without Docker (go-containerregistry): an OCI layout in bin/image,
# pushed to $(IMAGE) when set. Reproducible: the same commit gives the same digest.
image:
	go run ./internal/mkimage -version '$(VERSION)' -revision '$(REVISION)' -source-date-epoch '$(SOURCE_DATE_EPOCH)' -oci-layout bin/image $(if $(IMAGE),-push '$(IMAGE)')

# The same image with a Docker engine (Dockerfile).
image-docker:
	docker build --build-arg VERSION=$(VERSION) -t cachemachine:$(VERSION) .

clean:
	rm -rf bin

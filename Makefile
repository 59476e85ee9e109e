# Strait — every target is documented in README.md.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test demo fuzz bench bench-smoke bench-tls bench-policy bench-controller bench-controller-k8s check-deps release images clean help

all: build

help:
	@grep -E '^## ' Makefile | sed 's/^## //'

## build          debug binaries of the whole workspace (target/debug, or $CARGO_TARGET_DIR/debug)
build:
	$(CARGO) build --workspace --bins

## test           every test tier; installs what the tiers need when root, says what it skipped otherwise
test:
	./scripts/test.sh

## demo           the embedded mesh on this machine: controller, services with sidecars, faults, live metrics (DEMO_ARGS="--duration 30")
# Through cargo, so the binaries are found wherever CARGO_TARGET_DIR puts them.
demo: build
	$(CARGO) run -q --bin strait -- demo $(DEMO_ARGS)

## bench          release builds; Strait vs direct, HAProxy and nginx (see bench/README.md)
bench:
	./bench/run.sh

## bench-smoke    a few hundred requests per bench setup, to keep the harness alive
bench-smoke:
	./bench/run.sh --smoke

## bench-tls      mTLS vs plaintext Strait pair, connection reuse, handshakes per core (bench/results/tls-latest.md)
bench-tls:
	./bench/tls.sh

## bench-policy   full policy stack vs none, memory per destination service (bench/results/policy-latest.md)
bench-policy:
	./bench/policy.sh

## bench-controller  one controller: 10k services, 100k endpoints, 10k proxies, 100 changes/s, in Kubernetes mode then embedded mode (bench/results/controller-{k8s-,}latest.md)
bench-controller:
	./bench/controller.sh --kubernetes
	./bench/controller.sh

## bench-controller-k8s  the same in Kubernetes mode: 10k Services, 10k EndpointSlices, 100k Pods in a test API server (bench/results/controller-k8s-latest.md)
bench-controller-k8s:
	./bench/controller.sh --kubernetes

## fuzz           every cargo-fuzz target for FUZZ_SECONDS each (default 60; fuzz/README.md)
fuzz:
	./scripts/fuzz.sh

## check-deps     the proxy links neither kube nor k8s-openapi
check-deps:
	./scripts/check-proxy-deps.sh

## release        optimized binaries (target/release)
release:
	$(CARGO) build --release --workspace --bins

## images         strait-proxy and strait-controller images as OCI archives in target/images (release binaries; PROFILE=debug packs target/debug's)
images:
	./scripts/images.sh --profile $(or $(PROFILE),release)

clean:
	$(CARGO) clean

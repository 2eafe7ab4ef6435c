# The README's commands. `make test` is what CI runs (.ci/run).
.PHONY: test demo bench lint fmt fuzz setup services-start services-stop images

test:            ## set up the machine, start services, run the whole suite, stop them
	bash scripts/test.sh

demo:            ## the main job on the embedded two-node default (no cluster needed): make demo [CONSUMER=python] [BROKER=nats] [DEMO_ARGS="--load bursty ..."]
	bash scripts/demo.sh $(if $(CONSUMER),--consumer $(CONSUMER)) $(if $(BROKER),--broker $(BROKER)) $(DEMO_ARGS)

bench:           ## benchmarks against buildah, skopeo, zstd/pigz and the raw upload limit, and the protocol's full conformance matrix
	bash scripts/bench.sh

images:          ## build and push the agent and shim images: make images REGISTRY=registry.example.com/ms2m [TAG=0.1.0] [PUSH=0]
	REGISTRY="$(REGISTRY)" TAG="$(TAG)" PUSH="$(PUSH)" CONTAINER_ENGINE="$(CONTAINER_ENGINE)" bash scripts/images.sh

lint:            ## formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

fuzz:            ## each cargo-fuzz target for FUZZ_SECONDS (default 60); stable harness without cargo-fuzz
	bash scripts/fuzz.sh

setup:           ## install packages and CRIU >= 4.2 only
	bash scripts/setup.sh

services-start:
	bash scripts/services.sh start

services-stop:
	bash scripts/services.sh stop

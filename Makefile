# ModelRoute — `make run` starts the server with emulated providers; `make test` runs
# everything CI runs. Both work on a fresh machine with Rust installed.

SHELL := bash
CARGO ?= cargo
PLUGINS := replicate openai bfl fal
# Adapters only tests load (target/test-plugins): one misbehaves on purpose, one
# has a lying manifest, one makes a plugin author's first mistakes; the SDK's
# template must pass the conformance kit.
TEST_DIST := target/test-plugins
# Where cargo builds: CARGO_TARGET_DIR when set, as cargo itself does.
TARGET_DIR := $(abspath $(or $(CARGO_TARGET_DIR),target))
PLUGIN_TARGET := wasm32-wasip2
PLUGIN_OUT := $(TARGET_DIR)/$(PLUGIN_TARGET)/plugin
DIST := plugins/dist
# The SDK's template is a crate of its own that depends on the published SDK (so it
# builds wherever it is copied); here it is built as its authors would build it,
# against this checkout's SDK instead.
LOCAL_SDK := --config 'patch.crates-io.modelroute-sdk.path="$(CURDIR)/sdk"'
TEMPLATE_OUT := $(TARGET_DIR)/template/$(PLUGIN_TARGET)/release/modelroute_template.wasm

.PHONY: run test plugins build bench bench-door setup lint fmt clean pydeps

# The official openai Python SDK, which the OpenAI-compatible door's e2e test drives
# (tests/openai_sdk). Installed from PyPI into target/pydeps, once per version.
OPENAI_SDK_VERSION := 3.51.0
PYDEPS := target/pydeps
# The API fuzzer and the OpenAPI validator that the OpenAPI e2e tests run
# (tests/tests/e2e/openapi.rs), in a folder of their own so that their
# dependencies never clash with the openai SDK's.
SCHEMATHESIS_VERSION := 4.32.5
OPENAPI_SPEC_VALIDATOR_VERSION := 0.9.0
PYDEPS_API := target/pydeps-api
# The S3-compatible server the object-store tests run against (moto's server), in
# a folder of its own likewise.
MOTO_VERSION := 5.1.18
PYDEPS_S3 := target/pydeps-s3

## Installs what a fresh machine lacks (the wasm target).
setup:
	@rustup target list --installed 2>/dev/null | grep -qx $(PLUGIN_TARGET) || rustup target add $(PLUGIN_TARGET)

## Builds every adapter to a WebAssembly component in plugins/dist/.
plugins: setup
	$(CARGO) build --profile plugin --target $(PLUGIN_TARGET) $(addprefix -p modelroute-plugin-,$(PLUGINS)) \
	  -p modelroute-fixture-hostile -p modelroute-fixture-liar -p modelroute-fixture-acme
	cd sdk/template && $(CARGO) build --release --target $(PLUGIN_TARGET) --target-dir $(TARGET_DIR)/template $(LOCAL_SDK)
	@mkdir -p $(DIST) $(TEST_DIST)
	@for p in $(PLUGINS); do cp $(PLUGIN_OUT)/modelroute_plugin_$$p.wasm $(DIST)/$$p.wasm; done
	@cp $(PLUGIN_OUT)/modelroute_fixture_hostile.wasm $(TEST_DIST)/hostile.wasm
	@cp $(PLUGIN_OUT)/modelroute_fixture_liar.wasm $(TEST_DIST)/liar.wasm
	@cp $(PLUGIN_OUT)/modelroute_fixture_acme.wasm $(TEST_DIST)/acme.wasm
	@cp $(TEMPLATE_OUT) $(TEST_DIST)/template.wasm
	@ls -l $(DIST) $(TEST_DIST)

## The server, the CLI and the provider emulators.
build: plugins
	$(CARGO) build --bins

## Runs the server on the embedded defaults (127.0.0.1:8080, data in ./data) with
## emulated providers; Ctrl-C stops both.
run: build
	@target/debug/modelroute-emulators & emulators=$$!; \
	trap 'kill $$emulators 2>/dev/null' EXIT INT TERM; \
	target/debug/modelroute serve --dev

## Installs the openai Python SDK into target/pydeps, schemathesis with
## openapi-spec-validator into target/pydeps-api, and moto's S3 server into
## target/pydeps-s3, when those versions are missing
## (the e2e tests put them on PYTHONPATH; nothing is installed system-wide).
pydeps:
	@test -d $(PYDEPS)/openai-$(OPENAI_SDK_VERSION).dist-info || \
	  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --disable-pip-version-check --quiet \
	    --target $(PYDEPS) openai==$(OPENAI_SDK_VERSION)
	@test -d $(PYDEPS_API)/schemathesis-$(SCHEMATHESIS_VERSION).dist-info && \
	  test -d $(PYDEPS_API)/openapi_spec_validator-$(OPENAPI_SPEC_VALIDATOR_VERSION).dist-info || \
	  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --disable-pip-version-check --quiet \
	    --upgrade --target $(PYDEPS_API) schemathesis==$(SCHEMATHESIS_VERSION) \
	    openapi-spec-validator==$(OPENAPI_SPEC_VALIDATOR_VERSION)
	@test -d $(PYDEPS_S3)/moto-$(MOTO_VERSION).dist-info || \
	  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --disable-pip-version-check --quiet \
	    --upgrade --target $(PYDEPS_S3) "moto[server]==$(MOTO_VERSION)"

## The whole suite: host and adapter unit tests, emulator tests, end-to-end tests
## (on the embedded store, then again on PostgreSQL: see tests/with-postgres.sh),
## and a packaging of the SDK as it would be published (authors depend on it by
## version). Ends with one line totalling every test binary's results.
test: build pydeps
	$(CARGO) package -p modelroute-sdk --allow-dirty
	@set -o pipefail; $(CARGO) test --workspace --exclude modelroute-sdk 2>&1 | tee target/test.log
	@set -o pipefail; MODELROUTE_TEST_STORE=postgres tests/with-postgres.sh \
	  $(CARGO) test -p modelroute-tests --test e2e 2>&1 | tee -a target/test.log
	@awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($$i ~ /^passed/) p += $$(i-1); if ($$i ~ /^failed/) f += $$(i-1) } } \
	  END { printf "%d passed, %d failed\n", p, f }' target/test.log

## Formatting and lints, as reviewers expect them.
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --exclude modelroute-sdk -- -D warnings
	cd sdk/template && $(CARGO) fmt --check
	cd sdk/template && $(CARGO) clippy --target $(PLUGIN_TARGET) --target-dir $(TARGET_DIR)/template $(LOCAL_SDK) -- -D warnings

## Benchmarks; figures are recorded in the README. Durable accepts are measured on
## the embedded store and on PostgreSQL (found or started by tests/with-postgres.sh).
bench: plugins
	tests/with-postgres.sh $(CARGO) bench -p modelroute --bench adapter --bench accept
	$(CARGO) build --release -p modelroute -p modelroute-tests --bins
	$(TARGET_DIR)/release/modelroute-loadgen --server $(TARGET_DIR)/release/modelroute --durability strict
	$(TARGET_DIR)/release/modelroute-loadgen --server $(TARGET_DIR)/release/modelroute --durability batched

## The OpenAI-compatible door: added latency and max RPS of a non-streamed chat
## completion against the shared bench's mock (tests/bench/door.sh; needs oha on
## PATH, in $$OHA or in ../bench-tools/bin; RATES, DURATION, WARMUP pass through),
## for each store of STORES and durability mode of MODES, then the time to first
## streamed text, direct and through the door (modelroute-ttfb).
TTFB_REQUESTS ?= 1000
STORES ?= redb postgres
MODES ?= strict batched
bench-door: plugins
	$(CARGO) build --release -p modelroute -p modelroute-tests --bins
	STORES="$(STORES)" MODES="$(MODES)" MODELROUTE=$(TARGET_DIR)/release/modelroute \
	  tests/with-postgres.sh tests/bench/door.sh
	$(TARGET_DIR)/release/modelroute-ttfb --server $(TARGET_DIR)/release/modelroute --requests $(TTFB_REQUESTS)

fmt:
	$(CARGO) fmt --all
	cd sdk/template && $(CARGO) fmt

clean:
	rm -rf $(DIST)
	$(CARGO) clean

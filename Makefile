# bgpedge — developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

GO       ?= go
PKG      := github.com/bgpedge/bgpedge
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo none)
# The commit's time, not the clock's, so a rebuild of one commit is identical.
BUILD_DATE ?= $(shell TZ=UTC git log -1 --format=%cd --date=format-local:%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS  := -s -w \
	-X $(PKG)/agent.Version=$(VERSION) \
	-X $(PKG)/agent.Commit=$(COMMIT) \
	-X $(PKG)/agent.BuildDate=$(BUILD_DATE)
TOOL     := $(GO) tool -modfile=tools/go.mod
FUZZTIME ?= 1m
CYCLES   ?= 20
AGENT_CYCLES ?= 10
CONFIG   ?= configs/local.yaml

.PHONY: all build test bench fuzz lint run package kafka-up kafka-down tools clean powercut

all: build

build: ## build bin/bgpedge
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/bgpedge ./cmd/bgpedge

test: ## deps, Kafka, go vet, go test -race, bounded fuzzing (what CI runs)
	scripts/test.sh

bench: ## every scripts/bench-*.sh, else go test -bench for all packages
	@shopt -s nullglob; scripts=(scripts/bench-*.sh); \
	if (( $${#scripts[@]} )); then \
		for s in "$${scripts[@]}"; do echo "==> $$s"; "$$s"; done; \
	else \
		$(GO) test -run '^$$' -bench . -benchmem ./...; \
	fi

powercut: ## power cuts under qemu: CYCLES (20) of the spool, AGENT_CYCLES (10) of the agent (scripts/powercut-test.sh)
	CYCLES=$(CYCLES) AGENT_CYCLES=$(AGENT_CYCLES) scripts/powercut-test.sh

fuzz: ## every FuzzXxx target for FUZZTIME (default 1m) each
	FUZZTIME=$(FUZZTIME) scripts/fuzz.sh

lint: ## gofmt, go vet, staticcheck (pinned in tools/go.mod)
	@out=$$(gofmt -l $$(git ls-files --cached --others --exclude-standard '*.go')); \
	if [[ -n $$out ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOL) staticcheck ./...

run: build ## build, then run the agent with $(CONFIG) (local.yaml: spool and output files under ./.cache)
	bin/bgpedge run --config $(CONFIG)

kafka-up: ## start the local test broker on 127.0.0.1:9092
	scripts/kafka.sh start

kafka-down: ## stop it
	scripts/kafka.sh stop

tools: ## build the pinned developer tools once (staticcheck, nfpm)
	$(TOOL) staticcheck -version
	$(TOOL) nfpm --version

clean:
	rm -rf bin dist

package: ## .deb and .rpm (amd64, arm64) into dist/, reproducible (scripts/package.sh)
	scripts/package.sh

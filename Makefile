# firecracker-vmm build and test entry points. `make help` lists them.

GO       ?= go
BIN      := $(CURDIR)/bin
TESTFLAGS ?= -race -count=1 -timeout 15m

.PHONY: all build test vet fmt-check help clean

all: build ## Build every binary into ./bin

build: ## Build every binary into ./bin
	$(GO) build -o $(BIN)/ ./cmd/...

vet: ## go vet the whole module
	$(GO) vet ./...

fmt-check: ## Fail when gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

test: build fmt-check vet ## Run ALL tests (root-only tests skip with a message without root)
	VMM_EMULATOR=$(BIN)/firecracker-emulator $(GO) test $(TESTFLAGS) ./...

clean: ## Remove build output
	rm -rf $(BIN)

help: ## List targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "%-12s %s\n", $$1, $$2}'

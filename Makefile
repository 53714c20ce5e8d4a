# firecracker-vmm build and test entry points. `make help` lists them.

GO       ?= go
BIN      := $(CURDIR)/bin
TESTFLAGS ?= -race -count=1 -timeout 15m

.PHONY: all build test vet fmt-check help clean run fuzz-smoke

all: build ## Build every binary into ./bin

# The emulators are static (CGO_ENABLED=0): they run inside empty chroots under the jailer.
build: ## Build every binary into ./bin
	$(GO) build -o $(BIN)/ ./cmd/...
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/firecracker-emulator ./cmd/jailer-emulator

vet: ## go vet the whole module
	$(GO) vet ./...

fmt-check: ## Fail when gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

test: build fmt-check vet ## Run ALL tests (root-only tests skip with a message without root)
	VMM_EMULATOR=$(BIN)/firecracker-emulator VMM_BIN_DIR=$(BIN) $(GO) test $(TESTFLAGS) ./...

# Go native fuzz targets, as package:Target. Plain `go test` (make test) runs
# their seed corpora; fuzz-smoke also mutates each for FUZZTIME. Go allows
# one -fuzz pattern per invocation, hence one run per target. FUZZTIME is a
# count of executions (Nx) by default: a duration races a bug in Go 1.26's
# fuzz coordinator (golang/go#75804) that fails a run at the deadline with a
# bare "context deadline exceeded" and no crasher.
FUZZ_TARGETS := \
	./internal/sandbox:FuzzValidate \
	./internal/snapshot:FuzzValidName \
	./internal/snapshot:FuzzLoadSnapshot \
	./internal/ids:FuzzValid \
	./internal/daemon:FuzzLoad \
	./internal/fcemu:FuzzReadRequest \
	./internal/fcemu:FuzzDecodeStrict \
	./internal/store:FuzzDecodeRecord
FUZZTIME ?= 20000x

fuzz-smoke: ## Run each fuzz target for FUZZTIME (default 20000 executions) beyond its seeds
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

run: ## Build and start vmm-daemon for the quick start (emulator when no KVM)
	./scripts/dev-daemon.sh

clean: ## Remove build output
	rm -rf $(BIN)

help: ## List targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "%-12s %s\n", $$1, $$2}'

# Protobuf code generation: protoc from Debian's protobuf-compiler package
# (3.21.12 on bookworm), plugins pinned by the `tool` lines in go.mod.
PROTOS := $(shell find api -name '*.proto')

.PHONY: generate check-generate
generate: ## Regenerate the committed Go code from api/**/*.proto
	$(GO) build -o $(BIN)/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	PATH="$(BIN):$$PATH" protoc -I api --go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative $(PROTOS)

check-generate: generate ## Fail when the committed generated code is stale
	@git diff --exit-code -- api || { echo "generated code in api/ is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api)" || { git status --porcelain -- api; echo "untracked generated files in api/: run 'make generate' and commit"; exit 1; }

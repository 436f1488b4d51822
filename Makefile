# oneport: `make run` starts a node on embedded defaults, `make test` runs every test.

GO        ?= go
BIN       ?= bin/oneport
FUZZTIME  ?= 25s
# Packages whose tests run under the race detector in `make test`.
RACE_PKGS ?= ./mux/... ./lbhealth/... ./sfu/... ./bench/... ./cluster/... ./e2e/cluster/...

.PHONY: build run test test-race test-rest bench fuzz lint

build:
	$(GO) build -o $(BIN) ./cmd/oneport

run: build
	./$(BIN) serve

# Every test: vet and format first, the concurrent packages under -race, the
# rest plainly (the browser test needs root, chromium and node; .ci/run
# installs them).
test: lint test-race test-rest

test-race:
	$(GO) test -race -count=1 -timeout 15m $(RACE_PKGS)

test-rest:
	$(GO) test -count=1 -timeout 15m $$($(GO) list ./... | grep -v -e /mux -e /lbhealth -e /sfu -e /bench -e /cluster)

# Benchmarks: the mux's in-process figures, then every harness at bounded
# sizes, written to BENCHMARKS.md with each command and the date.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem ./mux/
	$(GO) run ./bench/cmd/benchreport -o BENCHMARKS.md

# Every fuzz target for FUZZTIME each. The inputs the fuzzer found
# interesting are copied from the Go cache into the package's testdata/fuzz
# corpus, so they run as regression seeds in `make test`; commit them.
fuzz:
	@set -e; cache=$$($(GO) env GOCACHE)/fuzz; \
	for f in $$(grep -rl --include='*_test.go' '^func Fuzz' .); do \
		dir=$$(dirname $$f); pkg=$$($(GO) list ./$$dir); \
		for t in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | cut -d' ' -f2); do \
			echo "== $$pkg $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./$$dir; \
			if [ -d "$$cache/$$pkg/$$t" ]; then \
				mkdir -p $$dir/testdata/fuzz/$$t; cp -n $$cache/$$pkg/$$t/* $$dir/testdata/fuzz/$$t/; \
			fi; \
		done; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

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

# Every fuzz target (every `func Fuzz` in a _test.go file) for FUZZTIME each.
# A crash fails the target (the fuzzer writes the input to the package's
# testdata/fuzz/<Fuzz...>/, where `make test` then replays it); the loop
# still runs the other targets, then fails, naming every target that
# crashed. The inputs the fuzzer found interesting are copied from the Go
# cache into the package's testdata/fuzz corpus, so they run as regression
# seeds in `make test`; commit them. Copying never fails the build: entries
# already in the corpus are kept (a name is its content's hash), a target
# that found nothing new may have no cache directory, and when the copied
# entries do not replay (a cache left by an older signature of the target,
# which the fuzzer skips but `go test` would not) they are removed again,
# with a warning.
fuzz:
	@cache=$$($(GO) env GOCACHE)/fuzz; failed=; \
	for f in $$(grep -rl --include='*_test.go' --exclude-dir=node_modules --exclude-dir=.git --exclude-dir=testdata '^func Fuzz' . | sort); do \
		dir=$$(dirname $$f); pkg=$$($(GO) list ./$$dir) || { failed="$$failed $$dir"; continue; }; \
		for t in $$(grep -o '^func Fuzz[A-Za-z0-9_]*' $$f | cut -d' ' -f2); do \
			echo "== $$pkg $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./$$dir || { failed="$$failed $$pkg.$$t"; continue; }; \
			copied=; \
			for e in "$$cache/$$pkg/$$t"/*; do \
				dst="$$dir/testdata/fuzz/$$t/$${e##*/}"; \
				[ -f "$$e" ] && [ ! -e "$$dst" ] || continue; \
				mkdir -p "$${dst%/*}" && cp "$$e" "$$dst" && copied="$$copied $$dst"; \
			done; \
			[ -z "$$copied" ] || $(GO) test -run "^$$t$$" -count=1 ./$$dir >/dev/null 2>&1 || { \
				echo "warning: $$t: the cached corpus does not replay; not copied"; rm -f $$copied; }; \
		done; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzzing failed:$$failed"; exit 1; fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Build, test and demo targets for the caddy-upgrade module.
# Recipes need bash (pipefail); Go comes from PATH.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CADDY_VERSION       := v2.11.9
XCADDY_VERSION      := v0.4.5
STATICCHECK_VERSION := v0.8.2
MODULE              := github.com/seedf05e/caddy-upgrade

# Sources that go into bin/caddy (xcaddy builds only the top-level package).
CADDY_SOURCES := $(wildcard *.go internal/*/*.go) go.mod go.sum

.PHONY: all demo test fuzz lint validate clean canary

all: bin/caddy bin/echo

bin/xcaddy:
	GOBIN=$(CURDIR)/bin go install github.com/caddyserver/xcaddy/cmd/xcaddy@$(XCADDY_VERSION)

bin/staticcheck:
	GOBIN=$(CURDIR)/bin go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

# xcaddy runs `go get <module>` before using its local replace, and Go falls
# back to the replace only on a "not found" answer. The module proxy answers
# "forbidden" for this path, so GONOPROXY skips it; GOVCS=<path>:off then turns
# the direct (git) lookup into "not found" too, instead of a network error.
bin/caddy: bin/xcaddy $(CADDY_SOURCES)
	GONOPROXY=$(MODULE) GOVCS=$(MODULE):off bin/xcaddy build $(CADDY_VERSION) --output bin/caddy --with $(MODULE)=.

bin/echo: $(wildcard cmd/echo/*.go internal/echo/*.go) go.mod go.sum
	go build -o bin/echo ./cmd/echo

# One shell recipe, so the trap kills the echo backend however Caddy exits.
# GODEBUG=http2xconnect=1 makes Caddy advertise RFC 8441 extended CONNECT on
# HTTP/2, so that a browser on https://localhost:8443/ opens its WebSocket
# over the page's HTTP/2 connection (the certificate is from Caddy's local CA).
demo: bin/caddy bin/echo
	@echo "open http://localhost:8080/ (WebSocket over HTTP/1.1)"
	@echo "  or https://localhost:8443/ (WebSocket over HTTP/2; accept the local certificate)"
	@bin/echo -listen 127.0.0.1:9001 & echo_pid=$$!; \
	trap 'kill $$echo_pid 2>/dev/null || true' EXIT; \
	trap 'exit 130' INT TERM; \
	GODEBUG=http2xconnect=1 bin/caddy run --adapter caddyfile --config Caddyfile.example

# Fails if any test is skipped: a silent skip (e.g. caddytest under -trimpath)
# must not pass as "ok". Never add -trimpath or -short here: -short skips
# every test that starts Caddy or a browser.
test: export GODEBUG := http2xconnect=1
test:
	go test -count=1 -race -timeout 15m -v ./... 2>&1 | tee test.log
	@if grep -- '--- SKIP' test.log; then \
		echo "FAIL: the tests above were skipped (full log in test.log)" >&2; \
		exit 1; \
	fi
	cd bench && go test -count=1 ./...
	cd soak && go test -count=1 ./...

# Runs every Fuzz target of every package of the module for 20,000
# executions each (a few seconds a target: the fuzzed packages link no
# Caddy); a package without one is skipped before its test binary is built.
# A count, not a duration: with a duration, Go 1.26's fuzz coordinator can
# report its own deadline as a failure on a loaded machine.
fuzz:
	@for entry in $$(go list -f '{{.ImportPath}}={{.Dir}}' ./...); do \
		pkg=$${entry%%=*}; dir=$${entry#*=}; \
		grep -qs '^func Fuzz' "$$dir"/*_test.go || continue; \
		names=$$(go test -list '^Fuzz' "$$pkg"); \
		for name in $$(grep '^Fuzz' <<<"$$names" || true); do \
			echo "== fuzz $$pkg $$name"; \
			go test -run='^$$' -fuzz="^$$name$$" -fuzztime=20000x "$$pkg"; \
		done; \
	done

# bench/ and soak/ are Go modules of their own, which ./... does not reach.
# The module is vetted for Linux, macOS and Windows whatever the host, so
# that a Linux-only call in a file without a build constraint fails here.
lint: bin/staticcheck
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:" >&2; gofmt -l . >&2; exit 1; }
	for goos in linux darwin windows; do GOOS=$$goos go vet ./...; done
	bin/staticcheck ./...
	for dir in bench soak; do (cd $$dir && go vet ./... && ../bin/staticcheck ./...); done

validate: bin/caddy
	bin/caddy validate --adapter caddyfile --config Caddyfile.example

clean:
	rm -rf bin test.log

# Load benchmark: direct, bare Caddy, Caddy with the upgrade module (policy
# and delegation), nginx and HAProxy, each pinned to CPU 0 with the load
# generator and backend on CPU 1, over plain ws:// and then over wss:// with
# each proxy terminating TLS 1.3 (one mode: bench/run.sh -tls plain, or
# -tls tls). Writes bench/results.md, bench/results.png and
# bench/results-tls.png. Micro-benchmarks: go test -run '^$' -bench . -benchmem .
.PHONY: bench
bench:
	bench/run.sh

# Reliability soak (README, Reliability): Caddy with the module and the echo
# backend as separate processes on 127.0.0.1, driven by soak/cmd/soak, which
# exits non-zero on any failed assertion. `make soak` is the full form (9,000
# tunnels, about 12 minutes; writes soak/results.md), `make soak-short` the
# CI form (1,000 tunnels, about 1.5 minutes). The -tls forms run the same
# scenarios and assertions with Caddy terminating TLS 1.3 on a certificate
# made for the run and every client on wss:// or https://. Extra flags:
# SOAK_FLAGS=...
.PHONY: soak soak-short soak-tls soak-short-tls
soak: bin/caddy bin/echo
	go build -C soak -o bin/soak ./cmd/soak
	soak/bin/soak -profile full -out soak/results.md $(SOAK_FLAGS)

soak-short: bin/caddy bin/echo
	go build -C soak -o bin/soak ./cmd/soak
	soak/bin/soak -profile short $(SOAK_FLAGS)

soak-tls: bin/caddy bin/echo
	go build -C soak -o bin/soak ./cmd/soak
	soak/bin/soak -profile full -tls -out soak/results-tls.md $(SOAK_FLAGS)

soak-short-tls: bin/caddy bin/echo
	go build -C soak -o bin/soak ./cmd/soak
	soak/bin/soak -profile short -tls $(SOAK_FLAGS)

# Canaries against the newest Caddy release the module proxy serves: a copy
# of the checkout with Caddy upgraded runs the tests that fail when an
# internal the module recognises changed (caddy_internals.go), and the
# hand-over tests. Pinned Caddy: these run in `make test` too.
canary:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	git ls-files -z | xargs -0 cp --parents -t "$$tmp"; \
	cd "$$tmp"; \
	latest=$$(go list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2@latest); \
	echo "== canaries against Caddy $$latest (pinned: $(CADDY_VERSION))"; \
	go get github.com/caddyserver/caddy/v2@$$latest >/dev/null; \
	go mod tidy >/dev/null; \
	GODEBUG=http2xconnect=1 go test -count=1 -race -run '^(TestCanary|TestHandOver)' -v . 2>&1 | tee canary.log | grep -E '^(--- |ok|FAIL|PASS)'; \
	if grep -q -- '--- SKIP' canary.log; then echo "FAIL: canaries skipped" >&2; exit 1; fi

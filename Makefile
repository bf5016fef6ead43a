# memberd — see README.md. `make test` and `make demo` install what they need.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)

GO       ?= go
BIN      ?= bin/memberd
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -X github.com/memberd/memberd/internal/buildinfo.Version=$(VERSION) \
            -X github.com/memberd/memberd/internal/buildinfo.Commit=$(COMMIT)
# Benchmarks: which packages and how long each benchmark runs.
BENCH_PKGS ?= ./...
BENCHTIME  ?= 2s
# Fuzzing time per target in `make fuzz`.
FUZZTIME   ?= 30s

.PHONY: all build test deps vet unit race bench lint fuzz demo soak e2e bench-appliance bench-consensus package image boot-test vm-image vm-image-test e2e-geth runbooks sim sim-det clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/memberd

deps:
	@bash scripts/deps.sh

vet:
	$(GO) vet ./...

# unit + integration tests, then the race detector (-short skips the long
# load tests, which the first pass already ran).
unit:
	$(GO) test -count=1 -timeout 30m ./...

race:
	$(GO) test -count=1 -race -short -timeout 30m ./...

test: deps vet unit race

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 60m $(BENCH_PKGS)

# Runs every fuzz target for FUZZTIME (the seed corpora run in `make test`).
fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME)

lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

demo: deps build
	@bash scripts/demo.sh $(BIN)

# Ledger endurance run (issue #9), NOT part of `make test`: the real binary
# (2 relays + 3 appliances from `memberd demo init`) under Broadcast load,
# with optional kill -9 faults. Settings are SOAK_* variables, e.g.
#   make soak SOAK_TX=200000
#   make soak SOAK_TX=150000 SOAK_FAULTS=follower,leader,relay SOAK_FAULT_EVERY=1m
# (README.md, "Soak", lists them all and what the run checks).
soak: deps build
	$(GO) build -o bin/soak ./test/soak
	bin/soak -soak_bin $(BIN)

# End-to-end suite (issue #11), NOT part of `make test` (build tag e2e):
# the real binary as separate processes on network-namespace hosts (2 relays,
# 3 members behind nftables egress rules, a squid or tinyproxy proxy host)
# with ledger load and faults; prints a summary table. Needs root, iproute2,
# nftables, SoftHSM2 (CI: .ci/run). 5 to 10 minutes on the shared box
# (4m57s and 9m47s for 19 scenarios, member_abuse 37-74 s). E2E_RUN='TestE2E/(formed|member_abuse)' runs a few (formed
# first: the others need the consortium). The load offers 1,000 envelopes/s
# (MEMBERD_E2E_LOAD_RATE=N, 0 for flat out), so the suite's time does not
# grow with the machine's speed.
E2E_TIMEOUT ?= 30m
# Seeded simulation (issue #11): the consortium in one process over a
# simulated network on virtual time (testing/synctest), with drops,
# duplicates, reordering, delay, partitions, crashes and clock jumps; SEEDS
# seeds from SEED, each for both simulations: TestLedgerSim (raft on direct
# links) and TestConsortiumSim (raft through the members' WireGuard tunnels
# and two relays, with relay crashes; test/sim/doc.go), the latter for
# TUNNEL_SEEDS seeds (default 5: a tunnel seed costs 2-8 s, a ledger one
# 1-3 s). SIMRUN picks one. A failing seed prints the command that runs it
# alone. The fault schedule of a seed is exact; goroutine interleaving is
# not, so a failing seed may need a few RUNS to fail again (test/sim/det,
# below, is exact).
SEEDS ?= 20
SEED  ?= 1
RUNS  ?= 1
TUNNEL_SEEDS ?= 5
SIMRUN ?= TestLedgerSim|TestConsortiumSim
SIMFLAGS ?=
# The deterministic simulation (test/sim/det): one goroutine drives three
# raftlog.Steppers (the real WAL, snapshots and Ready handling over etcd
# raft RawNodes), block cutters and block stores, so a seed's run is exact:
# DSEEDS seeds from SEED (about 0.1 s each), with the in-process replay
# and planted-bug tests, then the first DREPLAY of them again in a second
# process, whose trace hashes must match the first's (about 40 s in all).
# DETFLAGS: e.g. -det.plant=no-sync to see a planted bug found.
DSEEDS ?= 200
DREPLAY ?= 100
DETFLAGS ?=
sim: sim-det
	$(GO) test -count=$(RUNS) -timeout 60m -run '$(SIMRUN)' ./test/sim -sim.seeds=$(SEEDS) -sim.tunnelseeds=$(TUNNEL_SEEDS) -sim.seed=$(SEED) $(SIMFLAGS)

sim-det:
	@rm -f .sim-det-a .sim-det-b
	$(GO) test -count=1 -timeout 30m -run 'TestDet' ./test/sim/det -det.seed=$(SEED) -det.seeds=$(DSEEDS) -det.traces=$(CURDIR)/.sim-det-a $(DETFLAGS)
	$(GO) test -count=1 -timeout 30m -run 'TestDetSeeds' ./test/sim/det -det.seed=$(SEED) -det.seeds=$(DREPLAY) -det.traces=$(CURDIR)/.sim-det-b $(DETFLAGS)
	head -n $(DREPLAY) .sim-det-a | cmp - .sim-det-b && echo "sim-det: $(DREPLAY) seeds gave the same traces in two processes"
	@rm -f .sim-det-a .sim-det-b

e2e: deps build
	$(GO) vet -tags e2e ./test/e2e/
	MEMBERD_E2E_BIN=$(CURDIR)/$(BIN) $(GO) test -tags e2e -count=1 -v -timeout $(E2E_TIMEOUT) $(if $(E2E_RUN),-run '$(E2E_RUN)') ./test/e2e/

# Ordering through the appliances vs the node alone (issue #15), NOT part of
# `make test`: alternates node/orderer's BenchmarkOrdering cluster (3
# consenters, raft direct on loopback) with the real binary (2 relays + 3
# appliances from `memberd demo init`), same load (20,000 x 1 KB, 4 streams,
# TLS), and prints tx/s, p50/p99, leader CPU per tx and the ratio.
#   make bench-appliance BENCH_ROUNDS=3 BENCH_PROFILE=/tmp/leader.pprof
BENCH_ROUNDS  ?= 2
BENCH_PROFILE ?=
bench-appliance: deps build
	$(GO) build -o bin/soak ./test/soak
	$(GO) test -c -o bin/orderer.test ./node/orderer
	bin/soak bench -soak_bin $(BIN) -orderer_test bin/orderer.test -rounds $(BENCH_ROUNDS) -profile "$(BENCH_PROFILE)"

# Consensus traffic first (issue #15), NOT part of `make test`: the real
# binary (2 relays + 3 appliances from `memberd demo init`) with a
# saturating bulk TCP transfer from the raft leader to a follower through
# the tunnel (a service forward), with the prioritisation and then without
# it (MEMBERD_DIAG_NO_PRIORITY=1, a diagnostic switch), alternated; prints
# bulk MB/s, raft heartbeat round-trip p50/p99 (raft_heartbeat_rtt_seconds)
# and leader changes for both (README.md, "Consensus-first benchmark").
#   make bench-consensus BENCH_HB_DURATION=30s      # smoke; default 5m per side
BENCH_HB_DURATION ?= 5m
BENCH_HB_ROUNDS   ?= 1
bench-consensus: deps build
	$(GO) build -o bin/soak ./test/soak
	bin/soak consensus -soak_bin $(BIN) -duration $(BENCH_HB_DURATION) -rounds $(BENCH_HB_ROUNDS)

# .deb and .rpm in bin/dist/ (packaging/README.md). nfpm is a build tool, not
# a dependency of memberd: installed into bin/tools, kept out of go.mod.
NFPM_VERSION ?= v2.45.2
NFPM         ?= bin/tools/nfpm-$(NFPM_VERSION)
$(NFPM):
	GOBIN=$(CURDIR)/bin/tools GOFLAGS=-mod=mod $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	mv bin/tools/nfpm $@
package: build $(NFPM)
	@bash packaging/build.sh $(NFPM) $(BIN) $(VERSION)

# Boot test (root, Docker Engine, debootstrap): the .deb under systemd as
# PID 1 in three Debian 12 containers (packaging/boot-test/run.sh). About a
# minute, plus 2-4 for the first debootstrap (the root filesystem is cached
# in ~/.cache/memberd-boottest). Not in `make test`; .ci/run runs it.
boot-test: package
	@bash packaging/boot-test/run.sh

# VM image (root, debootstrap, e2fsprogs, dosfstools, mtools, fdisk): a UEFI
# disk with Debian 12, the .deb installed, memberd.service enabled and a
# non-interactive first-boot seed (packaging/vm/README.md). The Debian base is
# cached in ~/.cache/memberd-vm. vm-image-test checks the disk's files and
# boots it in QEMU without KVM (test/vmimage). Neither is in `make test`.
vm-image: package
	@bash packaging/vm/build.sh $$(ls -t bin/dist/memberd_*.deb | head -1)
vm-image-test: vm-image
	MEMBERD_VM_IMAGE=$(CURDIR)/$$(ls -t bin/dist/memberd-vm_*.raw | head -1) MEMBERD_VM_BIN=$(CURDIR)/$(BIN) \
		$(GO) test -tags vmimage -count=1 -v -timeout 20m ./test/vmimage/

# docs/runbooks.md run as written (test/runbooks, build tag runbooks): the
# doc's runbooks one after the other on a demo consortium of real processes
# (2 relays, 3 members, SoftHSM2), with a stand-in systemctl. Needs softhsm2,
# opensc (pkcs11-tool), yq, jq, curl. About 2 minutes. Not in `make test`;
# .ci/run runs it.
runbooks: deps build
	$(GO) vet -tags runbooks ./test/runbooks/
	MEMBERD_BIN=$(CURDIR)/$(BIN) $(GO) test -tags runbooks -count=1 -v -timeout 15m ./test/runbooks/

# Container image tarball in bin/dist/ (docker load / podman load), built
# without a Docker daemon (packaging/oci, its own go.mod).
image: build
	@bash packaging/image.sh $(BIN) $(VERSION)

# go-ethereum end to end (issue #16, docs/quorum.md): two members' geth nodes
# peer (eth) and gossip signed transactions only through memberd's tunnel
# (forwards or member_addresses), with real `memberd relay`/`memberd run`
# processes: a relay is killed, QUIC blocked, the member hosts firewalled down
# to the relays (root: netns, nftables), and the ledger keeps its raft leader
# under a Broadcast load meanwhile. geth comes from the Go module proxy, built once (a few
# minutes on 2 cores) and cached in GETH_DIR. Not in `make test`; .ci/run runs it.
GETH_VERSION ?= v1.14.12
GETH_DIR     ?= $(HOME)/.cache/memberd-geth/$(GETH_VERSION)
$(GETH_DIR)/geth:
	mkdir -p $(GETH_DIR)
	GOBIN=$(GETH_DIR) GOFLAGS=-buildvcs=false $(GO) install github.com/ethereum/go-ethereum/cmd/geth@$(GETH_VERSION)
e2e-geth: build $(GETH_DIR)/geth
	MEMBERD_BIN=$(CURDIR)/$(BIN) MEMBERD_GETH=$(GETH_DIR)/geth $(GO) test -count=1 -v -timeout 10m ./test/geth

clean:
	rm -rf bin

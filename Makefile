# Metalfleet — run `make help` for the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO        ?= go
TOOLS     := $(CURDIR)/.tools/bin
BIN       := $(CURDIR)/bin
export PATH := $(TOOLS):/usr/local/go/bin:$(PATH)

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2

# Debian packages the build, the tests and `make run` need: ipxe for the PXE
# service's boot files; redis-server, frr and frr-pythontools for metal-core's
# tests (a real CONFIG_DB, FRR's own check of frr.conf, frr-reload.py);
# ipmitool and openipmi (ipmi_sim) for metal-bmc's IPMI provider, its test and the lab's IPMI BMC.
APT_PKGS := postgresql ca-certificates git ipxe cpio e2fsprogs dosfstools fdisk zstd xz-utils redis-server frr frr-pythontools ipmitool openipmi lldpd isc-dhcp-relay isc-dhcp-client
# What booting the installer and the lab image under QEMU needs besides
# (mdadm, lvm2, dmsetup and xfsprogs are packed into the installer when
# installed on the build host).
QEMU_PKGS := qemu-system-x86 qemu-utils ovmf ipxe-qemu mtools

# As root the embedded PostgreSQL runs as user postgres, which must be able to
# reach the data directory; a checkout under /root is not reachable for it.
ROOT      := $(filter 0,$(shell id -u))
DATA_DIR  ?= $(if $(ROOT),/var/lib/metalfleet/central,$(CURDIR)/.data/central)
LISTEN    ?= :8443
METRICS   ?= 127.0.0.1:9090

BINARIES := metal-central metalctl metal-lab metal-pixie metal-phonehome metal-core metal-bmc sonic-emu

.PHONY: help
# Colour only for a terminal (and not with NO_COLOR): piped or redirected
# help stays plain text.
help: ## Show this help.
	@if [ -t 1 ] && [ -z "$${NO_COLOR:-}" ]; then c=$$'\033[36m' r=$$'\033[0m'; else c= r=; fi; \
	awk -v c="$$c" -v r="$$r" 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  %s%-20s%s %s\n", c, $$1, r, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: apt-deps tools ## Install what is missing: Debian packages and pinned Go tools (idempotent).

.PHONY: apt-deps
apt-deps:
	@$(MAKE) --no-print-directory apt-install PKGS="$(APT_PKGS)"

.PHONY: qemu-deps
qemu-deps: ## Install QEMU, OVMF and iPXE ROMs (the QEMU tests, the lab).
	@$(MAKE) --no-print-directory apt-install PKGS="$(QEMU_PKGS)"

.PHONY: apt-install
apt-install:
	@missing=$$(for p in $(PKGS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root (or install: $$missing)"; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

.PHONY: tools
tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc ## Install pinned Go tools into .tools/bin.

# Each tool is rebuilt only when the pinned version in this Makefile changes.
$(TOOLS)/buf: Makefile
	@mkdir -p $(TOOLS)
	@$(TOOLS)/buf --version 2>/dev/null | grep -qx '$(BUF_VERSION:v%=%)' || GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@touch $@
$(TOOLS)/protoc-gen-go: Makefile
	@mkdir -p $(TOOLS)
	@$(TOOLS)/protoc-gen-go --version 2>/dev/null | grep -q '$(PROTOC_GEN_GO_VERSION)' || GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@touch $@
$(TOOLS)/protoc-gen-go-grpc: Makefile
	@mkdir -p $(TOOLS)
	@$(TOOLS)/protoc-gen-go-grpc --version 2>/dev/null | grep -q '$(PROTOC_GEN_GO_GRPC_VERSION:v%=%)' || GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@touch $@

.PHONY: generate
generate: tools ## Generate Go from proto/ with buf (the output is committed).
	cd proto && buf generate

.PHONY: check-generated
check-generated: generate ## Fail if `make generate` changes committed files.
	@if [ -n "$$(git status --porcelain -- proto)" ]; then \
		echo "generated code is stale: run 'make generate' and commit"; git status --porcelain -- proto; git diff --stat -- proto; exit 1; fi

.PHONY: lint
lint: tools ## go vet, gofmt check, dependency and table-owner rules (lab/layout), buf lint, go mod tidy check.
	$(GO) vet ./...
	$(GO) test -count=1 ./lab/layout/
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	cd proto && buf lint
	@cp go.mod /tmp/metalfleet.go.mod.bak && cp go.sum /tmp/metalfleet.go.sum.bak; \
	$(GO) mod tidy; \
	if ! git diff --quiet -- go.mod go.sum; then echo "go.mod/go.sum not tidy"; git diff -- go.mod go.sum; \
		cp /tmp/metalfleet.go.mod.bak go.mod; cp /tmp/metalfleet.go.sum.bak go.sum; exit 1; fi

# The binaries, the installer and the lab image are files made from files:
# each is rebuilt only when something it is built from is newer, so a
# second `make lab` builds nothing. The sources are listed generously (all
# files of the parts, not only .go: central embeds sql/), tests excluded.
GO_SRCS := go.mod go.sum $(shell find agents central installer lab/cmd lab/internal metalctl proto sql -type f ! -name '*_test.go' ! -path '*/testdata/*' ! -path 'installer/build/*' 2>/dev/null)
PKG_metal-central   := ./central/cmd/metal-central
PKG_metalctl        := ./metalctl/cmd/metalctl
PKG_metal-lab       := ./lab/cmd/metal-lab
PKG_metal-pixie     := ./agents/pixie/cmd/metal-pixie
PKG_metal-phonehome := ./agents/phonehome/cmd/metal-phonehome
PKG_metal-core      := ./agents/metalcore/cmd/metal-core
PKG_metal-bmc       := ./agents/metalbmc/cmd/metal-bmc
PKG_sonic-emu       := ./lab/cmd/sonic-emu
# Static: it is copied into installed systems of any distribution.
$(BIN)/metal-phonehome: BUILD_ENV := CGO_ENABLED=0
$(BIN)/metal-phonehome: BUILD_FLAGS := -trimpath -ldflags '-s -w'
# Static: it runs in the lab's router guests (lab/image/build-router.sh).
$(BIN)/sonic-emu: BUILD_ENV := CGO_ENABLED=0
$(BIN)/sonic-emu: BUILD_FLAGS := -trimpath -ldflags '-s -w'

.PHONY: build
build: $(addprefix $(BIN)/,$(BINARIES)) ## Build every binary into bin/ (those whose sources changed).

# go build replaces a binary by a new file, so daemons of a running lab
# keep theirs.
$(BIN)/%: $(GO_SRCS)
	@mkdir -p $(BIN)
	$(BUILD_ENV) $(GO) build $(BUILD_FLAGS) -o $@ $(PKG_$*)

# Besides central/, what runs concurrently under test gets the race detector.
RACE_PKGS := ./agents/agent/... ./agents/metalcore/... ./agents/metalbmc/... ./lab/internal/vm/... ./lab/internal/redfish/... ./lab/internal/lab/...

.PHONY: test
test: deps qemu-deps ## Run all tests (race detector on for central/ and $(RACE_PKGS)) against a real embedded PostgreSQL.
	$(GO) test -race -count=1 -timeout 20m ./central/... $(RACE_PKGS)
	$(GO) test -count=1 -timeout 20m $$($(GO) list ./... | grep -v -E -e '/central/' $(foreach p,$(RACE_PKGS),-e '$(p:./%/...=/%)($$|/)'))

FUZZTIME ?= 10s
# Go minimizes every input that finds new coverage for up to 60s by
# default, one call of the target per candidate, and the minimizer's byte
# pass is quadratic in the input's length: a multi-KiB input (an image
# archive) always runs out the full minute, during which that worker
# counts no execs. Early in a run nearly every input finds new coverage,
# so a short run did nothing but minimize (FuzzUnpack: 0 execs/s).
# A bound in calls keeps that cheap; a crasher is still written, less
# shrunk (FUZZMINIMIZE=60s shrinks one further).
FUZZMINIMIZE ?= 100x

# Every Fuzz* target, found by `go test -list` in the packages whose tests
# declare one, runs for FUZZTIME: short, but each run starts from the
# target's seeds and checked-in corpus, so a regression of a found bug is
# caught. 22 targets at 10s: about 5 minutes on 2 cores with the builds.
.PHONY: fuzz
fuzz: ## Run every fuzz target of the repository for FUZZTIME each (default 10s; a failing input fails).
	GO=$(GO) FUZZTIME=$(FUZZTIME) FUZZMINIMIZE=$(FUZZMINIMIZE) bash .ci/fuzz

.PHONY: run
run: deps build ## Run metal-central with its embedded PostgreSQL (TLS; prints address, CA and admin token).
	@echo "data directory: $(DATA_DIR)"
	@echo "in another shell:"
	@echo "  export METALCTL_API_URL=localhost$(LISTEN) METALCTL_CA_FILE=$(DATA_DIR)/ca.crt"
	@echo "  export METALCTL_API_TOKEN=\$$(cat $(DATA_DIR)/admin.token)"
	@echo "  $(BIN)/metalctl partition list"
	$(BIN)/metal-central --data-dir $(DATA_DIR) --listen $(LISTEN) --metrics-listen $(METRICS)

.PHONY: bench-ipam
bench-ipam: deps ## IPAM benchmark against go-ipam and pgbench on one PostgreSQL (see BENCHMARKS.md).
	bash bench/ipam.sh

# The reconnect guard (issue 13): 2,000 agents, central restarted; fails
# when the fleet comes back more than 1.5 times slower than it connected
# cold in the same run, or when fewer than 90 % of the returning agents
# resume their TLS session. A ratio of one run, not an absolute time.
FLEET_GUARD_AGENTS ?= 2000
.PHONY: fleet-guard
fleet-guard: build ## The fleet's return after a central restart, guarded (2,000 agents, about a minute).
	$(BIN)/metal-lab fleet --agents $(FLEET_GUARD_AGENTS) --rate 20 --duration 5s --restart \
		--central-arg=--durable=false --max-return-ratio 1.5 --min-resumed 0.9

.PHONY: bench-fleet
bench-fleet: ## Agent fleet scale (P1-P3 of docs/agent-protocol.md) with metal-lab fleet; about 15 minutes.
	bash bench/fleet.sh

# The installer: metal-installer, metal-phonehome and what they import
# (agents/agent, proto), go.mod (u-root's version), the build scripts, and
# the kernel when KERNEL= gives one.
# (INSTALLER_DIR and LAB_IMAGE_DIR are where the lab looks; other values
# are for tests of this Makefile.)
INSTALLER_DIR   ?= build/installer
LAB_IMAGE_DIR   ?= build/lab-image
INSTALLER       := $(INSTALLER_DIR)/vmlinuz $(INSTALLER_DIR)/initramfs.cpio.gz
INSTALLER_SRCS  := go.mod go.sum $(KERNEL) $(shell find installer agents/agent agents/phonehome proto -type f ! -name '*_test.go' ! -path '*/testdata/*' 2>/dev/null)
LAB_IMAGE       := $(LAB_IMAGE_DIR)/metal-lab-image.tar.zst
LAB_IMAGE_SRCS  := installer/build/lib.sh $(shell find lab/image/build.sh lab/image/initrd-init lab/image/rootfs 2>/dev/null) $(KERNEL)

.PHONY: installer-image
installer-image: $(INSTALLER) ## Installer kernel + u-root initramfs into build/installer/ when its sources changed (KERNEL=/MODULES= to use your own kernel).

$(INSTALLER) &: $(INSTALLER_SRCS) | apt-deps
	OUT=$(abspath $(INSTALLER_DIR)) bash installer/build/build.sh

.PHONY: installer-boot-test
installer-boot-test: installer-image qemu-deps ## Boot the installer once under QEMU (central unreachable: it must come up and say so).
	bash installer/build/boot-test.sh

.PHONY: lab-image
lab-image: $(LAB_IMAGE) ## The lab's OS image: build/lab-image/metal-lab-image.tar.zst (+ .sha256), when its sources changed; reproducible.

$(LAB_IMAGE) &: $(LAB_IMAGE_SRCS) | apt-deps
	OUT=$(abspath $(LAB_IMAGE_DIR)) bash lab/image/build.sh

.PHONY: lab-image-test
lab-image-test: installer-image lab-image qemu-deps ## Boot the lab image (direct and UEFI), then install it end to end with the installer in QEMU.
	bash lab/image/boot-test.sh
	$(GO) test -count=1 -run TestInstallLabImageInQEMU ./lab/image

.PHONY: provision-e2e
provision-e2e: installer-image lab-image qemu-deps ## The provisioning chain for real: central, pixie, the installer in QEMU, create --wait until Phoned Home.
	METALFLEET_E2E=1 $(GO) test -count=1 -v -timeout 30m -run 'TestProvisionWithRealCentralAndPixie|TestInstallLabImageInQEMU' ./lab/image

# The lab's router guest (leaves, spine, exit): kernel + one initramfs.
ROUTER_IMAGE_DIR  ?= build/router-image
ROUTER_IMAGE      := $(ROUTER_IMAGE_DIR)/vmlinuz $(ROUTER_IMAGE_DIR)/router.cpio.gz
ROUTER_IMAGE_SRCS := installer/build/lib.sh lab/image/build-router.sh $(shell find lab/image/router -type f 2>/dev/null) $(KERNEL)

.PHONY: lab-router-image
lab-router-image: $(ROUTER_IMAGE) ## The lab's router guest: build/router-image/{vmlinuz,router.cpio.gz} (redis, FRR, sonic-emu, metal-core), when its sources changed; reproducible.

# The router guest's packages besides APT_PKGS' (build-router.sh copies
# their files and finds their libraries on the build host).
ROUTER_APT_PKGS := lldpd isc-dhcp-relay python3-minimal gcc libsnmp40

.PHONY: router-deps
router-deps: apt-deps
	@$(MAKE) --no-print-directory apt-install PKGS="$(ROUTER_APT_PKGS)"

$(ROUTER_IMAGE) &: $(ROUTER_IMAGE_SRCS) $(BIN)/sonic-emu $(BIN)/metal-core | router-deps
	OUT=$(abspath $(ROUTER_IMAGE_DIR)) SONIC_EMU=$(BIN)/sonic-emu METAL_CORE=$(BIN)/metal-core bash lab/image/build-router.sh

.PHONY: lab-router-test
lab-router-test: $(BIN)/sonic-emu $(BIN)/metal-core qemu-deps | router-deps ## Boot the router guest with the SONiC emulation's tests inside (real VRF, VXLAN, vlan filtering, dhcrelay, lldpd, APPL_DB, FRR reload), check the lab disk, then measure the plain guest (boot, idle CPU, memory).
	@mkdir -p build
	CGO_ENABLED=0 $(GO) test -c -o build/sonicemu.test ./lab/internal/sonicemu
	OUT=$(abspath build/router-image-test) TEST_BIN=$(abspath build/sonicemu.test) SONIC_EMU=$(BIN)/sonic-emu METAL_CORE=$(BIN)/metal-core bash lab/image/build-router.sh
	TEST=1 TIMEOUT=1500 MEM=384 IMG=$(abspath build/router-image-test) bash lab/image/router-boot-test.sh
	$(MAKE) lab-router-image
	DISK=1 bash lab/image/router-boot-test.sh
	bash lab/image/router-boot-test.sh

# The lab `make lab` runs: the routed fabric (leaves as router guests with
# metal-core); LAB_TOPOLOGY=lab/topologies/mini.yaml runs the small one.
LAB_TOPOLOGY ?= lab/topologies/fabric.yaml

.PHONY: lab
lab: deps build installer-image lab-image lab-router-image qemu-deps ## Run the lab: a partition with central, pixie, a spine, an exit, two leaves running metal-core and three QEMU machines (stays up; prints how to use metalctl). A lab that is up stays as it is; LAB_RECREATE=1 builds it anew; LAB_TOPOLOGY=lab/topologies/mini.yaml the small lab.
	$(BIN)/metal-lab up --topology $(LAB_TOPOLOGY) $(if $(LAB_RECREATE),--recreate)

.PHONY: lab-status
lab-status: ## What runs in the lab, machines' power, central's machine list.
	$(BIN)/metal-lab status --topology $(LAB_TOPOLOGY)

.PHONY: lab-down
lab-down: ## Stop the lab and remove its namespaces, disks and database (logs stay).
	$(BIN)/metal-lab down --topology $(LAB_TOPOLOGY)

.PHONY: lab-e2e
lab-e2e: lab-mini-e2e lab-fabric-e2e ## The end-to-end tests on both labs, one after the other: the mini lab's machine life, then the fabric's (prints timings).

.PHONY: lab-mini-e2e
lab-mini-e2e: deps build installer-image lab-image qemu-deps ## The end-to-end test on the mini lab: PXE, Waiting, allocate, disk boot, reinstall, free, the console, an IPMI machine (prints timings).
	@mkdir -p build
	$(BIN)/metal-lab e2e --topology lab/topologies/mini.yaml --json build/lab-e2e.json

.PHONY: lab-fabric-e2e
lab-fabric-e2e: deps build installer-image lab-image lab-router-image qemu-deps ## The fabric's end-to-end test: leaves, spine and exit as router guests with metal-core, BGP unnumbered + EVPN, PXE through the leaves' DHCP relays, a machine in a tenant VRF phoning home through the agent relay, isolation, leaf failover, free.
	@mkdir -p build
	$(BIN)/metal-lab e2e --topology lab/topologies/fabric.yaml --json build/lab-fabric-e2e.json

.PHONY: clean
clean: ## Remove build output (not the data directory or the kernel download cache).
	rm -rf $(BIN) build

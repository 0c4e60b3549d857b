# rackboot — see README.md.
#
#   make demo    a virtual rack netbooting from rackboot (QEMU, private network)
#   make test    every test: unit, fuzz (short), loopback/netns servers, QEMU boots
#   make lint    go vet + staticcheck + gofmt
#   make build   bin/rackboot
#   make release static binaries for Linux and macOS (amd64, arm64) and the OCI image into dist/
#   make bench   side-by-side benchmarks into docs/BENCHMARKS.md (not part of test)
#   make test-arm64  only the arm64 UEFI VM's netboot (AAVMF, TCG; also part of test)

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
GO          ?= go
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X main.version=$(VERSION)
TOOLS       := $(CURDIR)/.cache/bin
FUZZTIME    ?= 5s

# The release build's settings (static, no cgo; -trimpath) for everything
# make test compiles: vet, the tests, fuzzing, and the rackboot binaries the
# tests build (they inherit the environment). One set of settings is one
# compile of the ~1,400 packages on a cold machine instead of three.
BUILDENV    := CGO_ENABLED=0 GOFLAGS="-trimpath $(GOFLAGS)"

# Pinned tools (go install at an exact version: checked by the Go checksum database).
STATICCHECK_VERSION := v0.7.0

IPXE_DIR    := pxe/ipxe/bin
ROOK_DIR    := bundles/rook/upstream
CNPG_DIR    := bundles/cnpg/upstream
LOADERS_DIR := imager/bootloaders/bin
STANDIN_DIR := lab/standin/build

# What the binary embeds, materialized at build time from pinned sources
# (Debian packages, the Rook and CloudNativePG Go modules), never committed.
EMBEDDED := $(IPXE_DIR)/SOURCE $(ROOK_DIR)/SOURCE $(CNPG_DIR)/SOURCE $(LOADERS_DIR)/SOURCE

.PHONY: all deps build ipxe bundles bootloaders standin standin-arm64 kubetest test test-arm64 unit fuzz lint release demo bench clean

all: build

## deps: the Debian packages the build and the tests need (only missing ones).
deps:
	@scripts/deps.sh

## ipxe: iPXE from Debian trixie's pinned ipxe .deb (BIOS, x64 and arm64 UEFI), downloaded
## (not installed) and copied into a git-ignored folder that the binary embeds.
ipxe: $(IPXE_DIR)/SOURCE
$(IPXE_DIR)/SOURCE: scripts/materialize-ipxe.sh
	scripts/materialize-ipxe.sh $(IPXE_DIR)
	@touch $@ # newer than the script even when it had nothing to do

## bundles: Rook's operator manifests from the pinned Go module github.com/rook/rook v1.18.8,
## and CloudNativePG's release manifest from github.com/cloudnative-pg/cloudnative-pg v1.30.0.
bundles: $(ROOK_DIR)/SOURCE $(CNPG_DIR)/SOURCE
$(ROOK_DIR)/SOURCE: scripts/materialize-rook.sh
	scripts/materialize-rook.sh $(ROOK_DIR)
$(CNPG_DIR)/SOURCE: scripts/materialize-cnpg.sh
	scripts/materialize-cnpg.sh $(CNPG_DIR)

## bootloaders: isolinux and systemd-boot from Debian packages, for ISO/USB images.
bootloaders: $(LOADERS_DIR)/SOURCE
$(LOADERS_DIR)/SOURCE: scripts/materialize-bootloaders.sh
	@scripts/deps.sh
	scripts/materialize-bootloaders.sh $(LOADERS_DIR)

## kubetest: etcd + kube-apiserver for the bundle tests, built once into ~/.cache (about 5 min cold).
kubetest:
	@scripts/kubetest-build.sh >/dev/null

## build: bin/rackboot with iPXE, Rook's manifests and the boot loaders embedded.
build: $(EMBEDDED)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/rackboot ./cmd/rackboot

## standin: the stand-in boot image (Debian kernel + our Go /init) for the lab and e2e tests.
standin: $(STANDIN_DIR)/SOURCE
$(STANDIN_DIR)/SOURCE: scripts/standin-kernel.sh $(shell find lab/standin imager -name '*.go' 2>/dev/null)
	@scripts/deps.sh
	[ -f $(STANDIN_DIR)/kernel/SOURCE ] || scripts/standin-kernel.sh $(STANDIN_DIR)/kernel
	$(BUILDENV) $(GO) run ./lab/standin/mkimage -kernel-dir $(STANDIN_DIR)/kernel -o $(STANDIN_DIR)
	@# Also in the user's cache, where `rackboot lab up` finds it from any folder.
	c="$${XDG_CACHE_HOME:-$$HOME/.cache}/rackboot/standin"; mkdir -p "$$c" && \
	  cp $(STANDIN_DIR)/vmlinuz $(STANDIN_DIR)/initramfs.cpio.gz $(STANDIN_DIR)/SOURCE "$$c"/

## standin-arm64: the arm64 stand-in (Debian bookworm's arm64 kernel, pinned in
## scripts/standin-kernel-arm64.sh, + our /init built for arm64) in $(STANDIN_DIR)/arm64,
## where serve --standin finds it for arch: arm64 machines.
STANDIN_ARM64_DIR := $(STANDIN_DIR)/arm64
standin-arm64: $(STANDIN_ARM64_DIR)/SOURCE
$(STANDIN_ARM64_DIR)/SOURCE: scripts/standin-kernel-arm64.sh scripts/standin-kernel.sh $(shell find lab/standin imager -name '*.go' 2>/dev/null)
	[ -f $(STANDIN_ARM64_DIR)/kernel/SOURCE ] || scripts/standin-kernel-arm64.sh $(STANDIN_ARM64_DIR)/kernel
	$(BUILDENV) $(GO) run ./lab/standin/mkimage -arch arm64 -kernel-dir $(STANDIN_ARM64_DIR)/kernel -o $(STANDIN_ARM64_DIR)
	c="$${XDG_CACHE_HOME:-$$HOME/.cache}/rackboot/standin/arm64"; mkdir -p "$$c" && \
	  cp $(STANDIN_ARM64_DIR)/vmlinuz $(STANDIN_ARM64_DIR)/initramfs.cpio.gz $(STANDIN_ARM64_DIR)/SOURCE "$$c"/

## test-arm64: only the arm64 UEFI VM (qemu-system-aarch64 virt, AAVMF's own PXE,
## TCG) netbooting to installed (e2e/arm64_linux_test.go; `test` runs it too:
## about 65 s from QEMU's start under TCG on 2 cores).
test-arm64: deps build standin standin-arm64
	$(GO) test -count=1 -timeout 30m -v -run TestArm64UEFINetboot ./e2e

## test: everything a change must pass. Installs what it needs on a fresh Debian machine.
test: deps build standin standin-arm64 kubetest lint unit fuzz

unit: $(EMBEDDED)
	$(BUILDENV) $(GO) test -count=1 -timeout 40m ./...

fuzz:
	@$(BUILDENV) scripts/fuzz.sh $(FUZZTIME)

lint: $(TOOLS)/staticcheck
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt: $$bad" >&2; exit 1; fi
	$(BUILDENV) $(GO) vet ./...
	$(BUILDENV) $(TOOLS)/staticcheck ./...

$(TOOLS)/staticcheck:
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

## release: static binaries (CGO off) for the laptops rackboot runs on.
## No Windows: the state directory's secrets must be owner-only (mode 0600)
## and are refused otherwise; Windows files have no POSIX mode (Go reports
## 0666), so every command reading them would fail from its second run.
PLATFORMS := linux/amd64 linux/arm64 darwin/arm64 darwin/amd64
release: $(EMBEDDED)
	@mkdir -p dist
	@for p in $(PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; \
	  echo "release: $$os/$$arch"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' \
	    -o dist/rackboot-$(VERSION)-$$os-$$arch ./cmd/rackboot; \
	done
	@cd dist && sha256sum rackboot-$(VERSION)-* > SHA256SUMS
	@# rackboot's OCI image (linux/amd64 + linux/arm64, no base image), reproducible:
	@# every timestamp is the commit's (SOURCE_DATE_EPOCH); the layout goes to dist/oci.
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) $(GO) run ./cmd/mkociimage \
	  --binary linux/amd64=dist/rackboot-$(VERSION)-linux-amd64 \
	  --binary linux/arm64=dist/rackboot-$(VERSION)-linux-arm64 \
	  --version $(VERSION) --revision "$$(git rev-parse HEAD 2>/dev/null)" --out dist/oci

## demo: three QEMU machines netboot from rackboot on a private network, reach "installed", then everything is removed.
demo: deps build standin
	@scripts/sushy.sh
	PATH="$$PATH:$(CURDIR)/.cache/sushy/bin" bin/rackboot lab demo

bench: deps build standin
	scripts/bench.sh

clean:
	rm -rf bin dist $(IPXE_DIR) $(ROOK_DIR) $(CNPG_DIR) $(LOADERS_DIR) $(STANDIN_DIR)

#!/usr/bin/env bash
# materialize-cnpg.sh OUTDIR — copy CloudNativePG's release manifest (CRDs,
# RBAC, webhooks and the operator Deployment) from the pinned Go module
# github.com/cloudnative-pg/cloudnative-pg into OUTDIR (normally
# bundles/cnpg/upstream/, git-ignored and embedded by `go build`). Nothing
# here is committed.
#
#   OUTDIR/cnpg-1.30.0.yaml  releases/cnpg-1.30.0.yaml of the module, unchanged
#   OUTDIR/SOURCE            module, version, go.sum h1 hash, sha256 of the file
#
# The module is downloaded only (its go.mod wants client-go v0.36, which
# rackboot does not build with): `go mod download -json` runs in an empty temp
# module, outside rackboot's go.mod; the go command checks the module zip
# against the checksum database (GONOSUMDB/GOFLAGS=-insecure are refused
# below), the h1 hash is compared with the pin here and the file's sha256 with
# its own pin.
#
# Environment: GO overrides the go command.
set -euo pipefail
# shellcheck source=lib/materialize.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/materialize.sh"

MODULE=github.com/cloudnative-pg/cloudnative-pg
VERSION=v1.30.0
# go.sum line of the module zip: `github.com/cloudnative-pg/cloudnative-pg v1.30.0 h1:...`.
PIN_SUM=h1:fnhVq44xXx97MNiuvJsPrX1vSjYbgdyBK5MSGfdHdp0=
FILE=cnpg-1.30.0.yaml
PIN_SHA256=f8bede43fe4ee0d478c2355b204a36876b2ae4faac60f2a9452280b293da3b88
GO=${GO:-go}

die() { echo "materialize-cnpg: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
OUT=$1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
download_module "$MODULE" "$VERSION" "$PIN_SUM" "$TMP"

src=$dir/releases/$FILE
[[ -f $src ]] || die "$MODULE@$VERSION has no releases/$FILE"
mkdir -p "$TMP/out"
cp "$src" "$TMP/out/$FILE"
got=$(sha256sum "$TMP/out/$FILE" | awk '{print $1}')
[[ $got == "$PIN_SHA256" ]] || die "releases/$FILE has sha256 $got, the pin says $PIN_SHA256: refusing it"
{
	echo "module: $MODULE"
	echo "version: $VERSION"
	echo "go.sum: $MODULE $VERSION $sum"
	echo "file: releases/$FILE $got"
} >"$TMP/out/SOURCE"

publish "$OUT" "$TMP/out" "$FILE"
echo "materialize-cnpg: $FILE from $MODULE $VERSION ($sum) in $OUT"

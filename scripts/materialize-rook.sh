#!/usr/bin/env bash
# materialize-rook.sh OUTDIR — copy Rook-Ceph's operator manifests from the
# pinned Go module github.com/rook/rook into OUTDIR (normally
# bundles/rook/upstream/, git-ignored and embedded by `go build`). Nothing here
# is committed.
#
#   OUTDIR/crds.yaml OUTDIR/common.yaml OUTDIR/operator.yaml OUTDIR/csi-operator.yaml
#   OUTDIR/images.txt
#                    deploy/examples/<file> of the module, unchanged
#                    (images.txt is Rook's list of the images a release uses;
#                    bundles/rook checks the CSI images it pins against it)
#   OUTDIR/SOURCE    module, version, go.sum h1 hash, sha256 of each file
#
# `go mod download -json` runs in an empty temp module, outside rackboot's
# go.mod, so our go.mod/go.sum are not touched; the go command checks the
# module zip against the checksum database (GONOSUMDB/GOFLAGS=-insecure are
# refused below) and the h1 hash is compared with the pin here.
#
# Environment: GO overrides the go command.
set -euo pipefail
# shellcheck source=lib/materialize.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/materialize.sh"

MODULE=github.com/rook/rook
VERSION=v1.18.8
# go.sum line of the module zip: `github.com/rook/rook v1.18.8 h1:...`.
PIN_SUM=h1:O4HBcdlqJE3QxysMUSeNfG9nljvbrVuuB9ygTfn5vfE=
FILES=(crds.yaml common.yaml operator.yaml csi-operator.yaml images.txt)
GO=${GO:-go}

die() { echo "materialize-rook: $*" >&2; exit 1; }

[[ $# -eq 1 ]] || die "usage: $0 OUTDIR"
OUT=$1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
download_module "$MODULE" "$VERSION" "$PIN_SUM" "$TMP"

mkdir -p "$TMP/out"
for f in "${FILES[@]}"; do
	src=$dir/deploy/examples/$f
	[[ -f $src ]] || die "$MODULE@$VERSION has no deploy/examples/$f"
	cp "$src" "$TMP/out/$f"
done
{
	echo "module: $MODULE"
	echo "version: $VERSION"
	echo "go.sum: $MODULE $VERSION $sum"
	for f in "${FILES[@]}"; do
		echo "file: deploy/examples/$f $(sha256sum "$TMP/out/$f" | awk '{print $1}')"
	done
} >"$TMP/out/SOURCE"

publish "$OUT" "$TMP/out" "${FILES[@]}"
echo "materialize-rook: ${FILES[*]} from $MODULE $VERSION ($sum) in $OUT"

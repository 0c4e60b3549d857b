# Shared by scripts/materialize-*.sh (sourced, not run).

# publish OUT STAGE FILE...: put the staged files and STAGE/SOURCE into OUT,
# each by rename, once everything is in hand (a failed materialization never
# leaves OUT half replaced).
publish() {
	local out=$1 stage=$2 f
	shift 2
	mkdir -p "$out"
	for f in "$@" SOURCE; do
		install -m 0644 "$stage/$f" "$out/.$f.tmp"
		mv -f "$out/.$f.tmp" "$out/$f"
	done
}

# download_module MODULE VERSION PIN_SUM TMP: `go mod download` of the
# module, only after checking the environment leaves checksum verification
# on, in an empty module under TMP (it needs no main module, and this keeps
# rackboot's go.mod out of it); the go command checks the zip against the
# checksum database and the h1 hash is compared with PIN_SUM. Sets dir (the
# module's directory) and sum. Needs die() and GO.
download_module() {
	local module=$1 version=$2 pin=$3 tmp=$4 json err
	command -v "$GO" >/dev/null || die "no go command (install Go 1.26 at /usr/local/go)"
	command -v sha256sum >/dev/null || die "missing sha256sum (Debian: apt-get install coreutils)"
	[[ ${GONOSUMDB:-}${GONOSUMCHECK:-}${GOINSECURE:-} == "" && ${GOSUMDB:-} != off && ${GOFLAGS:-} != *insecure* ]] ||
		die "checksum verification is turned off in the environment (GOSUMDB/GONOSUMDB/GOINSECURE/GOFLAGS): refusing"
	json=$(cd "$tmp" && GOWORK=off GOFLAGS=-mod=mod "$GO" mod download -json "$module@$version") ||
		die "go mod download $module@$version failed: $json"
	field() { sed -n "s/^[[:space:]]*\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" <<<"$json" | head -n1; }
	err=$(field Error)
	[[ -z $err ]] || die "go mod download $module@$version: $err"
	dir=$(field Dir)
	sum=$(field Sum)
	[[ -d $dir ]] || die "go mod download gave no module directory for $module@$version"
	[[ $sum == "$pin" ]] || die "$module@$version has hash $sum, the pin says $pin: refusing it"
}

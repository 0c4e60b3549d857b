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

#!/usr/bin/env bash
# scripts/bench.sh — `make bench`: rackboot side by side with the tools people
# would otherwise use (nginx, tftpd-hpa, dnsmasq, a direct QEMU boot, the
# mkfs.fat + mtools + xorriso way of building an ISO, docker-registry), each
# pair on the same machine, runs alternating A/B/A/B for several rounds, every
# run one Go benchmark line; benchstat compares the pair and bench/verdict
# turns its confidence intervals into the row's verdict. Writes
# docs/BENCHMARKS.md (the text above the marker line kept, results replaced).
#
# Everything runs in network namespaces this script creates; it never sends a
# packet anywhere else. Everything it starts is stopped by PID and every
# namespace deleted on exit, failure included.
#
# Environment:
#   RACKBOOT=bin/rackboot   the binary under test
#   BENCH_ONLY="P1 P3"      run only these rows (default: all, P1-P9)
#   BENCH_ROUNDS=6          A/B rounds per pair; rows whose round is short
#                           (P2, P3, P5) run max(10, BENCH_ROUNDS), P2 over
#                           the veth twice that, P6 max(20, ·)
#   BENCH_QUICK=1           short runs, 2 rounds: for checking the harness
#   BENCH_OUT=FILE          where to write (default docs/BENCHMARKS.md)
#   BENCH_KEEP=1            keep the work directory (logs, raw results)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RB=$(realpath -m "${RACKBOOT:-bin/rackboot}")
ONLY=${BENCH_ONLY:-P1 P2 P3 P4 P5 P6 P7 P8 P9}
QUICK=${BENCH_QUICK:-0}
OUT=${BENCH_OUT:-docs/BENCHMARKS.md}
BENCHSTAT_VERSION=v0.0.0-20260908200009-22c9c6c9d4da # golang.org/x/perf
STANDIN=$ROOT/lab/standin/build
IPXE_EFI=$ROOT/pxe/ipxe/bin/ipxe.efi

if [ "$QUICK" = 1 ]; then
  ROUNDS=${BENCH_ROUNDS:-2}; SHORT_ROUNDS=$ROUNDS; P6_RUNS=$((ROUNDS * 2)); P1_SECS=2 P2_BIG=100
else
  ROUNDS=${BENCH_ROUNDS:-6}; SHORT_ROUNDS=$((ROUNDS > 10 ? ROUNDS : 10)); P6_RUNS=$((ROUNDS > 20 ? ROUNDS : 20)); P1_SECS=10 P2_BIG=400
fi
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 2 ] || { echo "bench: BENCH_ROUNDS=$ROUNDS: write a whole number of rounds, at least 2 (6 or more for confidence intervals)" >&2; exit 1; }
# P8: serve's default Lease timing (client-go's), seconds.
P8_LEASE=15 P8_RENEW=10 P8_RETRY=2

log() { echo "bench: $*" >&2; }
die() { log "error: $*"; exit 1; }
want() { [[ " $ONLY " == *" $1 "* ]]; }

[ "$(id -u)" = 0 ] || die "run as root: network namespaces, ports 67/69, raw DHCP sockets"
[ -x "$RB" ] || die "$RB missing: run \`make build\`"
if want P2; then [ -f "$IPXE_EFI" ] || die "$IPXE_EFI missing (P2 serves it): run \`make ipxe\`"; fi

# ---------------------------------------------------------------- packages
# Installed only when missing. A policy-rc.d that refuses service starts is
# put in place for the install (unless one exists): nginx and tftpd-hpa
# must not start as system services on the host's addresses.
PKGS=(wrk hyperfine time nginx tftpd-hpa dnsmasq-base xorriso dosfstools mtools busybox-static qemu-system-x86 iproute2 jq curl docker-registry)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  added_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && added_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || {
    [ -n "$added_policy" ] && rm -f /usr/sbin/policy-rc.d; die "apt-get install ${missing[*]} failed"; }
  [ -n "$added_policy" ] && rm -f /usr/sbin/policy-rc.d
fi

# ---------------------------------------------------------------- cleanup
WORK=$(mktemp -d /tmp/rackboot-bench.XXXXXX)
chmod 755 "$WORK" # nginx and in.tftpd drop privileges and must read files here
RES=$WORK/results
mkdir -p "$RES" "$WORK/bin" "$WORK/logs"
PIDS=()
NSS=()
cleanup() {
  local rc=$? pid ns i
  trap - EXIT INT TERM
  # Only our own children still running (reaped ones were removed by stop).
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for i in $(seq 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ $rc != 0 ]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# mkns ROLE: a fresh namespace with lo up and no route out; prints its name.
mkns() {
  local ns="rbb$$-$1"
  ip netns add "$ns"
  NSS+=("$ns")
  ip -n "$ns" link set lo up
  if [ -n "$(ip -n "$ns" route show default; ip -n "$ns" -6 route show default)" ]; then
    die "namespace $ns has a default route: refusing to run"
  fi
  NS=$ns
}

# start NS LOG CMD...: runs CMD in the background (in NS unless NS is -);
# sets PID. `ip netns exec` execs CMD, so PID is CMD's own PID.
start() {
  local ns=$1 logf=$2
  shift 2
  if [ "$ns" = - ]; then "$@" >"$logf" 2>&1 &
  else ip netns exec "$ns" "$@" >"$logf" 2>&1 &
  fi
  PID=$!
  PIDS+=("$PID")
}

# stop PID: SIGTERM, then SIGKILL after 5 s; reaps it.
stop() {
  local pid=$1 i keep=() p
  if kill -TERM "$pid" 2>/dev/null; then
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  # Forget it: cleanup must never signal a PID the system reused.
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# wait_http NS URL PID LOG: until URL answers 200 (30 s), or PID died.
wait_http() {
  local i
  for i in $(seq 300); do
    ip netns exec "$1" curl -fsS -o /dev/null --max-time 2 "$2" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { cat "$4" >&2; die "server for $2 exited"; }
    sleep 0.1
  done
  cat "$4" >&2
  die "$2 did not answer within 30 s"
}

# Rounds of a P2 row: SHORT_ROUNDS through the delay link, twice that over
# the veth (its rounds take seconds and move most with the host's load).
p2_rounds() { if [ "$1" = veth ] && [ "$QUICK" != 1 ]; then echo $((SHORT_ROUNDS * 2)); else echo "$SHORT_ROUNDS"; fi; }

# median, p95 and max of numbers on stdin.
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "n/a"; exit} if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
p95() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print "n/a"; exit} i=int(NR*0.95+0.999999); if (i<1) i=1; print a[i]}'; }
maxof() { sort -g | awk 'END {if (NR==0) print "n/a"; else print $1}'; }
# metric FILE BENCHNAME UNIT: the values of UNIT on the lines of BENCHNAME.
metric() { awk -v n="Benchmark$2" -v u="$3" '$1==n {for (i=3;i<NF;i++) if ($(i+1)==u) print $i}' "$1"; }
fmt() { awk -v a="$1" -v d="${2:-1}" 'BEGIN {if (a=="n/a") print a; else printf "%.*f", d, a}'; }
# allbelow FILE BENCHNAME UNIT LIMIT: 1 when every run's UNIT is below LIMIT
# (absolute targets hold for every run, not for a median), else 0.
allbelow() { metric "$1" "$2" "$3" | awk -v l="$4" 'BEGIN {ok=1} {n++; if (!($1 < l)) ok=0} END {print (n>0 && ok) ? 1 : 0}'; }

ROWS=()   # markdown table rows
row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 | $6 |"); }

# Every run appends one Go benchmark line to $RES/ROW/SIDE.txt: both sides
# of a pair use the same benchmark names, so `benchstat rackboot.txt
# PEER.txt` compares them.
bline() { mkdir -p "$RES/$1"; echo "$3" >>"$RES/$1/$2.txt"; }

# compare ROW BASE PEER: benchstat's table of the pair (text, for the
# results section) and its CSV (for judge).
compare() {
  local dir=$RES/$1
  { echo "== ${1^^}: $2 (base) vs $3"; (cd "$dir" && "$BENCHSTAT" "$2.txt" "$3.txt" 2>&1) || echo "(benchstat failed)"; echo; } >>"$STAT"
  (cd "$dir" && "$BENCHSTAT" -format csv "$2.txt" "$3.txt" 2>/dev/null) >"$dir.csv" || true
}
# judge ROW BENCH UNIT TARGET: the ratio verdict of one benchmark of a
# compared pair (bench/verdict): sets V (met / missed / no significant
# difference) and RATIO (ratio rackboot ÷ peer, its range, and why).
judge() {
  local out
  if out=$("$VERDICT" -bench "$2" -unit "$3" -target "$4" <"$RES/$1.csv" 2>&1); then
    V=${out%%$'\t'*}; RATIO=${out#*$'\t'}
  else
    V="no verdict"; RATIO="n/a ($out)"
  fi
}
# cell ABS_OK WHAT: the verdict cell from V and an absolute check (1 = every
# run passed WHAT).
cell() {
  if [ "$1" != 1 ]; then echo "**missed** ($2)"; return; fi
  case $V in met) echo met ;; missed) echo "**missed**" ;; *) echo "$V" ;; esac
}

# wrk_run NS URL CLIENTS ROW NAME SIDE: one wrk run of P1_SECS s; its line
# (MiB/s, req/s, socket errors + non-2xx answers) goes to ROW/SIDE.txt.
wrk_run() {
  local out line
  out=$(ip netns exec "$1" wrk -t2 -c"$3" -d"${P1_SECS}s" --timeout 60s "$2")
  echo "$out" >>"$WORK/logs/$4-wrk-$6.log"
  line=$(wrk_line "$5" <<<"$out")
  bline "$4" "$6" "$line"
  log "$6: $line"
}
# wrk_line NAME: wrk's report on stdin as one Go benchmark line.
wrk_line() {
  awk -v name="$1" '
    /^Requests\/sec:/ {rps = $2}
    /^Transfer\/sec:/ {v = $2; u = v; sub(/[0-9.]+/, "", u); sub(/[A-Za-z]+$/, "", v)
      m = (u == "GB") ? 1024 : (u == "MB") ? 1 : (u == "KB") ? 1/1024 : 1/1048576; mibs = v * m}
    /Socket errors/ {gsub(/,/, ""); errs += $4 + $6 + $8 + $10}
    /Non-2xx/ {errs += $NF}
    END {ns = (rps > 0) ? sprintf(" %.0f ns/op", 1e9 / rps) : ""  # no request done: no time per request
      printf "Benchmark%s 1%s %.1f MiB/s %.2f req/s %d errors\n", name, ns, mibs, rps, errs}'
}

# ---------------------------------------------------------------- shared
log "building the load generators, bench/verdict and benchstat"
go build -o "$WORK/bin/" ./bench/dhcpload ./bench/tftpload ./bench/delaylink ./bench/registryseed ./bench/verdict
GOBIN=$WORK/bin go install "golang.org/x/perf/cmd/benchstat@$BENCHSTAT_VERSION"
DHCPLOAD=$WORK/bin/dhcpload
TFTPLOAD=$WORK/bin/tftpload
VERDICT=$WORK/bin/verdict
BENCHSTAT=$WORK/bin/benchstat
STAT=$WORK/benchstat.txt
: >"$STAT"

RACK=$WORK/rack.yaml
cat >"$RACK" <<'EOF'
cluster:
  name: bench
  talosVersion: v1.13.0
  kubernetesVersion: 1.36.0
  vip: 10.98.0.10
  network:
    subnet: 10.98.0.0/20
    gateway: 10.98.0.254
    nameservers: [10.98.0.254]
    rackboot: 10.98.0.1 # configs name rackboot's registry mirror: P4's stand-in pulls its installer image there
machines:
  - name: bench1
    role: controlplane
    address: 10.98.0.11/20
    select: {mac: ["52:54:00:be:00:01"]}
EOF
"$RB" -f "$RACK" validate >/dev/null || die "bench rack file does not validate"

# One state directory with the cluster secrets made once; every server run
# gets a fresh copy (no leases, no machine states from an earlier run).
STATE_TEMPLATE=$WORK/state-template
# Until P3 makes the template, a state directory starts empty (serve then
# makes secrets, untimed).
fresh_state() {
  rm -rf "$1"
  if [ -d "$STATE_TEMPLATE" ]; then cp -a "$STATE_TEMPLATE" "$1"; rm -f "$1/dhcp-leases.json"; else mkdir -p "$1"; fi
}

# The machine's own speed, per section: the host can take CPU time from this
# machine (steal, in /proc/stat) or run it slower without saying so, and a row
# that moves between runs with both sides moving is the machine, not the code.
# Each mark times one core hashing 128 MiB and closes the previous section.
probe_ms() { local t0; t0=$(date +%s%N); head -c 134217728 /dev/zero | sha256sum >/dev/null; echo $((($(date +%s%N) - t0) / 1000000)); }
cpu_ticks() { awk '/^cpu / {print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
MACHINE=() MARK_NAME="" MARK_TICKS="" MARK_PROBE=""
machine_mark() {
  local ticks probe
  probe=$(probe_ms); ticks=$(cpu_ticks)
  if [ -n "$MARK_NAME" ]; then
    MACHINE+=("$(awk -v n="$MARK_NAME" -v a="$MARK_TICKS" -v b="$ticks" -v p0="$MARK_PROBE" -v p1="$probe" 'BEGIN {
      split(a, x, " "); split(b, y, " "); t = y[2] - x[2]; st = 0; if (t > 0) st = 100 * (y[1] - x[1]) / t;
      printf "%s: steal %.1f %%, probe %.2f s → %.2f s", n, st, p0 / 1000, p1 / 1000 }')")
  fi
  MARK_NAME=$1 MARK_TICKS=$ticks MARK_PROBE=$probe
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date -u +%Y-%m-%dT%H:%MZ)

# ================================================================ P1 HTTP
if want P1; then
  machine_mark P1
  log "P1: HTTP, a 100 MB file to 6 and 100 clients: rackboot vs nginx"
  mkns http; ns=$NS
  ip -n "$ns" link add d0 type bridge # no dummy module here; a bridge with no ports holds the address as well
  ip -n "$ns" addr add 10.98.0.1/20 dev d0
  ip -n "$ns" link set d0 up
  d=$WORK/p1
  mkdir -p "$d/www" "$d/nginx"
  head -c 100000000 /dev/urandom >"$d/www/initramfs.cpio.gz"
  printf 'kernel' >"$d/www/vmlinuz"
  chmod 755 "$d" "$d/www"; chmod 644 "$d/www/"*
  mkdir -p "$WORK/state-p1"; fresh_state "$WORK/state-p1"
  start "$ns" "$WORK/logs/p1-rackboot.log" "$RB" -f "$RACK" --state "$WORK/state-p1" serve -i d0 --dhcp off \
    --tftp-port 0 --events-port 0 --log-port 0 --http-port 8080 --standin "$d/www"
  rb_pid=$PID
  cat >"$d/nginx/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $d/nginx/nginx.pid;
error_log $d/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $d/nginx/body;
  proxy_temp_path $d/nginx/proxy;
  fastcgi_temp_path $d/nginx/fastcgi;
  uwsgi_temp_path $d/nginx/uwsgi;
  scgi_temp_path $d/nginx/scgi;
  types { application/octet-stream gz; }
  server { listen 10.98.0.1:8081; root $d/www; }
}
EOF
  start "$ns" "$WORK/logs/p1-nginx.log" nginx -p "$d/nginx" -e "$d/nginx/error.log" -c "$d/nginx/nginx.conf"
  ngx_pid=$PID
  URL_RB=http://10.98.0.1:8080/assets/standin/initramfs.cpio.gz
  URL_NGX=http://10.98.0.1:8081/initramfs.cpio.gz
  wait_http "$ns" "$URL_RB" "$rb_pid" "$WORK/logs/p1-rackboot.log"
  wait_http "$ns" "$URL_NGX" "$ngx_pid" "$WORK/logs/p1-nginx.log"
  want_sum=$(sha256sum <"$d/www/initramfs.cpio.gz" | cut -d' ' -f1)
  for u in "$URL_RB" "$URL_NGX"; do
    got=$(ip netns exec "$ns" curl -fsS "$u" | sha256sum | cut -d' ' -f1)
    [ "$got" = "$want_sum" ] || die "$u serves different bytes"
  done
  for c in 6 100; do
    for r in $(seq "$ROUNDS"); do
      for s in rackboot nginx; do
        u=$URL_RB; [ $s = nginx ] && u=$URL_NGX
        log "P1 c=$c round $r/$ROUNDS"
        wrk_run "$ns" "$u" "$c" p1 "P1/c$c" "$s"
      done
    done
  done
  # Peak RSS over all runs (VmHWM): the target holds for every run.
  rb_rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$rb_pid/status")
  ngx_workers_rss=$(for p in $(pgrep -P "$ngx_pid"); do awk '/VmHWM/ {print $2}' "/proc/$p/status"; done | awk '{s+=$1} END {printf "%.1f", s/1024}')
  stop "$rb_pid"; stop "$ngx_pid"
  compare p1 rackboot nginx
  for c in 6 100; do
    a=$(metric "$RES/p1/rackboot.txt" "P1/c$c" MiB/s | median)
    b=$(metric "$RES/p1/nginx.txt" "P1/c$c" MiB/s | median)
    judge p1 "P1/c$c" MiB/s '>=1.0'
    row "P1 HTTP 100 MB, $c clients (MiB/s, median of $ROUNDS × ${P1_SECS}s wrk)" "$(fmt "$a") MiB/s, peak RSS $rb_rss MiB" \
      "nginx $(fmt "$b") MiB/s (workers' RSS $ngx_workers_rss MiB)" "$RATIO" "≥ 1.0× nginx, RSS < 64 MB" \
      "$(cell "$(awk -v r="$rb_rss" 'BEGIN {print (r < 64) ? 1 : 0}')" "peak RSS $rb_rss MiB")"
  done
fi

# ================================================================ P2 TFTP
if want P2; then
  machine_mark P2
  log "P2: TFTP ipxe.efi, 1 and 200 clients, blksize 1468: rackboot vs tftpd-hpa"
  mkns tftps; srv=$NS
  mkns tftpc; cli=$NS
  start - "$WORK/logs/p2-delaylink.log" "$WORK/bin/delaylink" -a "/run/netns/$cli:dl0" -b "/run/netns/$srv:dl1" -delay 400us
  dl_pid=$PID
  for i in $(seq 100); do grep -q ready "$WORK/logs/p2-delaylink.log" && break; sleep 0.05; done
  grep -q ready "$WORK/logs/p2-delaylink.log" || { cat "$WORK/logs/p2-delaylink.log" >&2; die "delaylink did not start"; }
  ip -n "$srv" addr add 10.98.0.1/20 dev dl1; ip -n "$srv" link set dl1 up
  ip -n "$cli" addr add 10.98.0.2/20 dev dl0; ip -n "$cli" link set dl0 up
  # A plain veth beside it: the same transfers at loopback-like RTT.
  ip -n "$srv" link add v1 type veth peer name v0 netns "$cli"
  ip -n "$srv" addr add 10.97.0.1/24 dev v1; ip -n "$srv" link set v1 up
  ip -n "$cli" addr add 10.97.0.2/24 dev v0; ip -n "$cli" link set v0 up
  rtt_delay=$(ip netns exec "$cli" busybox ping -c 20 -i 0.05 10.98.0.1 | awk -F'[/ ]+' '/round-trip/ {print $(NF-2)}')
  rtt_veth=$(ip netns exec "$cli" busybox ping -c 20 -i 0.05 10.97.0.1 | awk -F'[/ ]+' '/round-trip/ {print $(NF-2)}')
  log "P2: measured RTT (busybox ping, avg): ${rtt_delay} ms through the delay link, ${rtt_veth} ms over the veth"
  mkdir -p "$WORK/state-p2" "$WORK/p2/tftproot"; fresh_state "$WORK/state-p2"
  cp "$IPXE_EFI" "$WORK/p2/tftproot/ipxe.efi"; chmod 755 "$WORK/p2" "$WORK/p2/tftproot"; chmod 644 "$WORK/p2/tftproot/ipxe.efi"
  # --listen-all: TFTP on the veth's address too (serve listens on the rack
  # interface's address only by default).
  start "$srv" "$WORK/logs/p2-rackboot.log" "$RB" -f "$RACK" --state "$WORK/state-p2" serve -i dl1 --dhcp off \
    --tftp-port 69 --events-port 0 --log-port 0 --http-port 8080 --listen-all
  rb_pid=$PID
  # -L: foreground; -s: chroot to the root; drops to user tftp.
  start "$srv" "$WORK/logs/p2-tftpd.log" in.tftpd -L -v -s -a :6969 "$WORK/p2/tftproot"
  tftpd_pid=$PID
  wait_http "$srv" http://10.98.0.1:8080/boot.ipxe "$rb_pid" "$WORK/logs/p2-rackboot.log"
  for path in delay veth; do
    host=10.98.0.1; [ $path = veth ] && host=10.97.0.1
    for c in 1 200; do
      # At least SHORT_ROUNDS (10) per row (p2_rounds): with 6, a 200-client
      # row ~10 % apart flipped between "met" and "no significant
      # difference" from run to run. Over the veth 40 one-client transfers
      # a round smooth out the host's jitter.
      n=$P2_BIG rounds=$(p2_rounds $path); [ $c = 1 ] && { n=5; [ $path = veth ] && n=40; }
      [ "$QUICK" = 1 ] && [ $c = 1 ] && [ $path = veth ] && n=20
      for r in $(seq "$rounds"); do
        for s in rackboot tftpd-hpa; do
          port=69; [ $s = tftpd-hpa ] && port=6969
          line=$(ip netns exec "$cli" "$TFTPLOAD" -server "$host:$port" -file ipxe.efi -expect "$IPXE_EFI" \
            -n "$n" -c "$c" -blksize 1468 -name "P2/$path-c$c" 2>>"$WORK/logs/p2-tftpload.log") || line="BenchmarkP2/$path-c$c $n 0 ns/op 0 xfers/s 0 MB/s 0 p50-ms $n failed"
          bline p2 "$s" "$line"
          log "P2 $path c=$c round $r/$rounds $s: $line"
        done
      done
    done
  done
  stop "$rb_pid"; stop "$tftpd_pid"; stop "$dl_pid"
  compare p2 rackboot tftpd-hpa
  for path in delay veth; do
    for c in 1 200; do
      a=$(metric "$RES/p2/rackboot.txt" "P2/$path-c$c" xfers/s | median)
      b=$(metric "$RES/p2/tftpd-hpa.txt" "P2/$path-c$c" xfers/s | median)
      fa=$(metric "$RES/p2/rackboot.txt" "P2/$path-c$c" failed | awk '{s+=$1} END {print s+0}')
      fb=$(metric "$RES/p2/tftpd-hpa.txt" "P2/$path-c$c" failed | awk '{s+=$1} END {print s+0}')
      rtt=$rtt_delay; [ $path = veth ] && rtt=$rtt_veth
      judge p2 "P2/$path-c$c" xfers/s '>=1.0'
      row "P2 TFTP ipxe.efi, $c client(s), RTT ${rtt} ms ($path) (transfers/s, median of $(p2_rounds $path))" "$(fmt "$a" 2) /s, $fa failed" \
        "tftpd-hpa $(fmt "$b" 2) /s, $fb failed" "$RATIO" "≥ 1.0× tftpd-hpa, 0 failures in every run" \
        "$(cell "$([ "$fa" = 0 ] && echo 1)" "$fa failed transfers")"
    done
  done
  # The harness itself: what the user-space relay adds over its 2 × 0.4 ms
  # (go test only checks that it never relays a frame early).
  over=$(awk -v r="$rtt_delay" 'BEGIN {if (r=="") print "n/a"; else printf "%.3f", r - 0.8}')
  V=met
  row "P2 harness: bench/delaylink, 0.4 ms each way (busybox ping RTT, avg of 20)" "${rtt_delay:-n/a} ms: the relay adds $over ms" \
    "plain veth ${rtt_veth:-n/a} ms" "n/a" "relay adds ≤ 3 ms" "$(cell "$(awk -v o="$over" 'BEGIN {print (o != "n/a" && o <= 3) ? 1 : 0}')" "the relay adds $over ms")"
fi

# ================================================================ P7 registry
if want P7; then
  machine_mark P7
  log "P7: registry mirror, a 100 MB layer blob to 6 and 50 clients: rackboot vs docker-registry"
  mkns reg; ns=$NS
  ip -n "$ns" link add d0 type bridge
  ip -n "$ns" addr add 10.98.0.1/20 dev d0
  ip -n "$ns" link set d0 up
  d=$WORK/p7
  mkdir -p "$d/registry"
  printf 'version: 0.1\nlog: {level: warn, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: "10.98.0.1:5001"}\n' \
    "$d/registry/data" >"$d/registry/config.yml"
  start "$ns" "$WORK/logs/p7-docker-registry.log" docker-registry serve "$d/registry/config.yml"
  reg_pid=$PID
  wait_http "$ns" http://10.98.0.1:5001/v2/ "$reg_pid" "$WORK/logs/p7-docker-registry.log"
  mkdir -p "$WORK/state-p7"; fresh_state "$WORK/state-p7"
  # The same image in rackboot's store (as assets pull leaves it) and pushed to docker-registry.
  blob=$(ip netns exec "$ns" "$WORK/bin/registryseed" -store "$WORK/state-p7/assets/images" -push 10.98.0.1:5001 \
    -ref registry.k8s.io/bench:1 -size 100000000) || die "P7: registryseed failed"
  start "$ns" "$WORK/logs/p7-rackboot.log" "$RB" -f "$RACK" --state "$WORK/state-p7" serve -i d0 --dhcp off \
    --tftp-port 0 --events-port 0 --log-port 0 --http-port 8080 --registry-port 5000
  rb_pid=$PID
  URL_RB="http://10.98.0.1:5000/v2/bench/blobs/$blob?ns=registry.k8s.io"
  URL_REG="http://10.98.0.1:5001/v2/bench/blobs/$blob"
  wait_http "$ns" "$URL_RB" "$rb_pid" "$WORK/logs/p7-rackboot.log"
  for u in "$URL_RB" "$URL_REG"; do
    got=$(ip netns exec "$ns" curl -fsSL "$u" | sha256sum | cut -d' ' -f1)
    [ "sha256:$got" = "$blob" ] || die "P7: $u serves different bytes"
  done
  for c in 6 50; do
    for r in $(seq "$ROUNDS"); do
      for s in rackboot docker-registry; do
        u=$URL_RB; [ $s = docker-registry ] && u=$URL_REG
        log "P7 c=$c round $r/$ROUNDS"
        wrk_run "$ns" "$u" "$c" p7 "P7/c$c" "$s"
      done
    done
  done
  rb_rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$rb_pid/status")
  reg_rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$reg_pid/status")
  stop "$rb_pid"; stop "$reg_pid"
  compare p7 rackboot docker-registry
  for c in 6 50; do
    a=$(metric "$RES/p7/rackboot.txt" "P7/c$c" MiB/s | median)
    b=$(metric "$RES/p7/docker-registry.txt" "P7/c$c" MiB/s | median)
    judge p7 "P7/c$c" MiB/s '>=1.0'
    row "P7 registry blob 100 MB, $c clients (MiB/s, median of $ROUNDS × ${P1_SECS}s wrk)" "$(fmt "$a") MiB/s, peak RSS $rb_rss MiB" \
      "docker-registry 2.8 (filesystem storage) $(fmt "$b") MiB/s, peak RSS $reg_rss MiB" "$RATIO" "≥ 1.0× docker-registry, RSS < 128 MB" \
      "$(cell "$(awk -v r="$rb_rss" 'BEGIN {print (r < 128) ? 1 : 0}')" "peak RSS $rb_rss MiB")"
  done
fi

# ================================================================ P3 + P6 DHCP
if want P3 || want P6; then
  machine_mark P3+P6
  mkns dhcps; srv=$NS
  mkns dhcpc; cli=$NS
  ip -n "$srv" link add s0 type veth peer name c0 netns "$cli"
  ip -n "$srv" addr add 10.98.0.1/20 dev s0; ip -n "$srv" link set s0 up
  ip -n "$cli" link set c0 up
  RANGE_RB=10.98.1.0-10.98.12.255
  rb_cmd() { echo "$RB" -f "$RACK" --state "$1" serve -i s0 --dhcp full --range $RANGE_RB --router none \
    --tftp-port 0 --events-port 0 --log-port 0 --http-port 8080; }
  dm_cmd() { echo dnsmasq --keep-in-foreground --conf-file=/dev/null --port=0 --interface=s0 --bind-interfaces \
    --except-interface=lo --dhcp-authoritative --dhcp-range=10.98.1.0,10.98.12.255,255.255.240.0,1h \
    --dhcp-leasefile="$1/dnsmasq.leases" --dhcp-lease-max=10000 --no-ping --pid-file= --log-facility="$1/dnsmasq.log"; }
  # The first serve creates the cluster secrets: that is the template.
  rm -rf "$STATE_TEMPLATE"; mkdir -p "$STATE_TEMPLATE"
  start "$srv" "$WORK/logs/p3-template.log" $(rb_cmd "$STATE_TEMPLATE")
  ip netns exec "$cli" "$DHCPLOAD" -i c0 -n 1 -c 1 -mac-prefix 02:ff -timeout 200ms -retries 150 >/dev/null 2>&1 ||
    { cat "$WORK/logs/p3-template.log" >&2; die "rackboot serve never answered DHCP"; }
  stop "$PID"
fi
if want P3; then
  log "P3: DHCP, 1000 clients (distinct MACs), 100 in flight: rackboot --dhcp full vs dnsmasq"
  for r in $(seq "$SHORT_ROUNDS"); do
    for s in rackboot dnsmasq; do
      st=$WORK/state-p3-$s-$r
      mkdir -p "$st"; fresh_state "$st"
      if [ $s = rackboot ]; then start "$srv" "$WORK/logs/p3-$s-$r.log" $(rb_cmd "$st")
      else start "$srv" "$WORK/logs/p3-$s-$r.log" $(dm_cmd "$st"); fi
      pid=$PID
      ip netns exec "$cli" "$DHCPLOAD" -i c0 -n 1 -c 1 -mac-prefix 02:ff -timeout 200ms -retries 150 >/dev/null 2>&1 ||
        { cat "$WORK/logs/p3-$s-$r.log" >&2; die "$s never answered DHCP"; }
      for mode in discover dora; do
        pfx=02:$(printf '%02x' $(( (r * 2 + ($([ $mode = discover ] && echo 0 || echo 1))) % 256 )))
        line=$(ip netns exec "$cli" "$DHCPLOAD" -i c0 -mode $mode -n 1000 -c 100 -timeout 1s -retries 4 \
          -mac-prefix "$pfx" -name "P3/$mode" 2>>"$WORK/logs/p3-dhcpload.log") ||
          line="BenchmarkP3/$mode 1000 0 ns/op 0 exch/s 0 p50-us 0 p99-us 1000 failed"
        bline p3 "$s" "$line"
        log "P3 round $r/$SHORT_ROUNDS $s: $line"
      done
      stop "$pid"
    done
  done
  compare p3 rackboot dnsmasq
  for mode in discover dora; do
    a=$(metric "$RES/p3/rackboot.txt" "P3/$mode" exch/s | median)
    b=$(metric "$RES/p3/dnsmasq.txt" "P3/$mode" exch/s | median)
    a99=$(metric "$RES/p3/rackboot.txt" "P3/$mode" p99-us | median)
    b99=$(metric "$RES/p3/dnsmasq.txt" "P3/$mode" p99-us | median)
    a99max=$(metric "$RES/p3/rackboot.txt" "P3/$mode" p99-us | maxof)
    a50=$(metric "$RES/p3/rackboot.txt" "P3/$mode" p50-us | median)
    b50=$(metric "$RES/p3/dnsmasq.txt" "P3/$mode" p50-us | median)
    fa=$(metric "$RES/p3/rackboot.txt" "P3/$mode" failed | awk '{s+=$1} END {print s+0}')
    fb=$(metric "$RES/p3/dnsmasq.txt" "P3/$mode" failed | awk '{s+=$1} END {print s+0}')
    ms() { awk -v u="$1" 'BEGIN {if (u=="n/a") print u; else printf "%.1f", u/1000}'; }
    label=DISCOVER→OFFER; [ $mode = dora ] && label="full DORA"
    judge p3 "P3/$mode" exch/s '>=1.0'
    row "P3 DHCP $label, 1000 clients, 100 in flight (exchanges/s; p50/p99 ms; medians of $SHORT_ROUNDS)" \
      "$(fmt "$a") /s; $(ms "$a50")/$(ms "$a99") ms; $fa failed" "dnsmasq $(fmt "$b") /s; $(ms "$b50")/$(ms "$b99") ms; $fb failed" \
      "$RATIO" "≥ 1.0× dnsmasq, p99 < 5 ms in every run" \
      "$(cell "$(allbelow "$RES/p3/rackboot.txt" "P3/$mode" p99-us 5000)" "worst run's p99 $(ms "$a99max") ms")"
  done
fi

# ================================================================ P6 start-up
if want P6; then
  log "P6: start-up, exec → first OFFER, $P6_RUNS runs each, alternating"
  for i in $(seq "$P6_RUNS"); do
    for s in rackboot dnsmasq; do
      st=$WORK/state-p6-$s-$i
      mkdir -p "$st"; fresh_state "$st"
      if [ $s = rackboot ]; then cmd=$(rb_cmd "$st"); else cmd=$(dm_cmd "$st"); fi
      # shellcheck disable=SC2086
      ms=$(ip netns exec "$cli" "$DHCPLOAD" -i c0 -startup -interval 2ms -mac-prefix "02:e$((i % 10))" \
        -server-log "$WORK/logs/p6-$s.log" -- ip netns exec "$srv" $cmd 2>>"$WORK/logs/p6-dhcpload.log" | awk '{print $2}') || ms=
      [ -n "$ms" ] || die "P6: $s did not answer (see $WORK/logs/p6-*.log)"
      echo "$ms" >>"$WORK/p6-$s.ms"
      bline p6 "$s" "$(awk '{printf "BenchmarkP6/startup 1 %.0f ns/op", $1*1e6}' <<<"$ms")"
      rm -rf "$st"
    done
  done
  compare p6 rackboot dnsmasq
  a=$(median <"$WORK/p6-rackboot.ms"); a95=$(p95 <"$WORK/p6-rackboot.ms"); amax=$(maxof <"$WORK/p6-rackboot.ms")
  b=$(median <"$WORK/p6-dnsmasq.ms"); b95=$(p95 <"$WORK/p6-dnsmasq.ms")
  judge p6 P6/startup sec/op '<=1.0' # the ratio only: the target is absolute
  row "P6 start-up: exec → first OFFER ($P6_RUNS runs each, median / p95 / worst ms)" "$(fmt "$a") / $(fmt "$a95") / $(fmt "$amax") ms" \
    "dnsmasq $(fmt "$b") / $(fmt "$b95") ms" "$RATIO" "< 200 ms in every run" \
    "$(V=met; cell "$(awk -v m="$amax" 'BEGIN {print (m < 200) ? 1 : 0}')" "worst run $amax ms")"
fi

# ================================================================ P5 image
# Both sides build the same ISO from the same inputs: the stand-in kernel,
# a 100 MB initramfs and the boot loaders. rackboot renders the machine
# config and kernel command line itself (rack file + secrets); the peer
# (bench/isopeer/build.sh: mkfs.fat + mtools for the EFI boot image, then
# xorriso -as mkisofs) is given both as files, taken once from a reference
# ISO rackboot built before the timed runs.
if want P5; then
  machine_mark P5
  log "P5: ISO with a 100 MB initramfs: rackboot image iso vs mkfs.fat + mcopy + xorriso, $SHORT_ROUNDS rounds"
  [ -f "$STANDIN/vmlinuz" ] || die "$STANDIN missing: run \`make standin\`"
  d=$WORK/p5
  mkdir -p "$d/in" "$d/ref" "$d/peer"
  head -c 100000000 /dev/urandom >"$d/in/initramfs.img"
  cp "$STANDIN/vmlinuz" "$d/in/vmlinuz"
  mkdir -p "$WORK/state-p5"; fresh_state "$WORK/state-p5"
  bl=$ROOT/imager/bootloaders/bin
  if [ ! -f "$bl/isolinux.bin" ]; then
    bl=$WORK/bootloaders
    scripts/materialize-bootloaders.sh "$bl" >"$WORK/logs/p5-bootloaders.log" 2>&1 || { cat "$WORK/logs/p5-bootloaders.log" >&2; die "boot loaders"; }
  fi
  rb_iso=("$RB" -f "$RACK" --state "$WORK/state-p5" image iso bench1 --kernel "$d/in/vmlinuz" --initrd "$d/in/initramfs.img" --bootloaders "$bl")
  peer_iso=(bash "$ROOT/bench/isopeer/build.sh")
  peer_args() { echo "$1" bench1 "$d/in/vmlinuz" "$d/in/initramfs.img" "$d/in/config.yaml" "$d/in/cmdline.txt" "$bl"; }
  # The reference ISO (untimed): the rendered config and command line.
  "${rb_iso[@]}" -o "$d/ref.iso" >"$WORK/logs/p5-ref.log" 2>&1 || { cat "$WORK/logs/p5-ref.log" >&2; die "rackboot image iso failed"; }
  xorriso -osirrox on -indev "$d/ref.iso" -extract / "$d/ref" >"$WORK/logs/p5-extract.log" 2>&1
  chmod -R u+w "$d/ref"
  cp "$d/ref/config.yaml" "$d/in/config.yaml"
  awk '/^  APPEND / {sub(/^  APPEND /, ""); print}' "$d/ref/isolinux/isolinux.cfg" >"$d/in/cmdline.txt"
  [ -s "$d/in/cmdline.txt" ] || die "P5: no APPEND line in rackboot's isolinux.cfg"
  # Same work: the peer's ISO holds the same files (isolinux.bin and
  # boot.cat differ only by what each tool patches in), its EFI boot image
  # has the same size and the same files.
  # shellcheck disable=SC2046
  "${peer_iso[@]}" $(peer_args "$d/check.iso") >"$WORK/logs/p5-peer-check.log" 2>&1 || { cat "$WORK/logs/p5-peer-check.log" >&2; die "P5: the peer script failed"; }
  xorriso -osirrox on -indev "$d/check.iso" -extract / "$d/peer" >>"$WORK/logs/p5-extract.log" 2>&1
  chmod -R u+w "$d/peer"
  for f in $(cd "$d/ref" && find . -type f ! -name boot.cat ! -name isolinux.bin ! -name efiboot.img | sort); do
    cmp -s "$d/ref/$f" "$d/peer/$f" || die "P5: $f differs between rackboot's ISO and the peer's"
  done
  [ "$(stat -c %s "$d/ref/boot/efiboot.img")" = "$(stat -c %s "$d/peer/boot/efiboot.img")" ] || die "P5: the EFI boot images differ in size"
  mkdir -p "$d/esp-ref" "$d/esp-peer"
  mcopy -s -n -i "$d/ref/boot/efiboot.img" ::/ "$d/esp-ref/" && mcopy -s -n -i "$d/peer/boot/efiboot.img" ::/ "$d/esp-peer/"
  diff -r "$d/esp-ref" "$d/esp-peer" >"$WORK/logs/p5-esp-diff.log" || { cat "$WORK/logs/p5-esp-diff.log" >&2; die "P5: the EFI boot images hold different files"; }
  rm -rf "$d/ref" "$d/peer" "$d/esp-ref" "$d/esp-peer" "$d/check.iso"
  for r in $(seq "$SHORT_ROUNDS"); do
    for s in rackboot mkfs.fat+xorriso; do
      rm -f "$d/out.iso"
      if [ $s = rackboot ]; then cmd=("${rb_iso[@]}" -o "$d/out.iso"); else read -ra pa <<<"$(peer_args "$d/out.iso")"; cmd=("${peer_iso[@]}" "${pa[@]}"); fi
      t0=$(date +%s%N)
      /usr/bin/time -f %M -a -o "$d/rss-$s" "${cmd[@]}" >>"$WORK/logs/p5-$s.log" 2>&1 || { tail -20 "$WORK/logs/p5-$s.log" >&2; die "P5 $s run $r failed"; }
      t1=$(date +%s%N)
      stat -c %s "$d/out.iso" >"$d/size-$s"
      bline p5 "$s" "BenchmarkP5/iso 1 $((t1 - t0)) ns/op"
      log "P5 round $r/$SHORT_ROUNDS $s: $(awk -v n=$((t1 - t0)) 'BEGIN {printf "%.2f", n/1e9}') s"
    done
  done
  compare p5 rackboot mkfs.fat+xorriso
  a=$(metric "$RES/p5/rackboot.txt" P5/iso ns/op | median | awk '{print $1/1e9}')
  b=$(metric "$RES/p5/mkfs.fat+xorriso.txt" P5/iso ns/op | median | awk '{print $1/1e9}')
  arss=$(maxof <"$d/rss-rackboot" | awk '{printf "%.1f", $1/1024}')
  brss=$(maxof <"$d/rss-mkfs.fat+xorriso" | awk '{printf "%.1f", $1/1024}')
  sz=$(cat "$d/size-rackboot" "$d/size-mkfs.fat+xorriso" | awk '{printf "%s%.1f", (NR>1 ? " / " : ""), $1/1e6}')
  judge p5 P5/iso sec/op '<=1.0'
  row "P5 ISO build, 100 MB initramfs (wall s, median of $SHORT_ROUNDS; ISO MB rackboot / peer: $sz)" \
    "$(fmt "$a" 2) s, peak RSS $arss MiB" "mkfs.fat + mcopy + xorriso $(fmt "$b" 2) s, peak RSS $brss MiB" "$RATIO" \
    "≤ 1.0× the peer, RSS < 128 MB in every run" "$(cell "$(awk -v r="$arss" 'BEGIN {print (r < 128) ? 1 : 0}')" "peak RSS $arss MiB")"
fi

# ================================================================ P4 + P9 netboot
# P4: PXE via rackboot vs a direct boot. P9: the same PXE boot without the
# lab's RA responder, and on every PXE boot the time iPXE spends in
# "Configuring (net0 MAC)" (DHCP, then IPv6 autoconfiguration) until "ok".
if want P4 || want P9; then
  machine_mark P4+P9
  variants=()
  want P4 && variants+=(direct pxe)
  want P9 && { want P4 || variants+=(pxe); variants+=(pxe-nora); }
  log "P4/P9: one VM, power-on → stand-in report: ${variants[*]}, $ROUNDS rounds"
  [ -f "$STANDIN/vmlinuz" ] || die "$STANDIN missing: run \`make standin\`"
  mkns vm; ns=$NS
  ip -n "$ns" link add br0 type bridge
  ip -n "$ns" link set br0 type bridge stp_state 0 forward_delay 0
  ip -n "$ns" addr add 10.98.0.1/20 dev br0; ip -n "$ns" link set br0 up
  ip -n "$ns" tuntap add dev tap0 mode tap
  ip -n "$ns" link set tap0 master br0; ip -n "$ns" link set tap0 up
  d=$WORK/p4; mkdir -p "$d"
  MAC=52:54:00:be:00:01 UUID=6c3f0a52-0b8e-4a34-9d8e-2b7c5e1f0a01
  # The direct boot's command line comes from rackboot's iPXE script, whose
  # config token is bound to the machine's MAC, UUID and address, and serve
  # checks the requester's link-layer address and (full DHCP) its lease: the
  # request comes from a namespace on the bridge with the machine's MAC,
  # which first takes its lease (busybox udhcpc), and address; its port is
  # up only for that.
  mkns fetch; fns=$NS
  ip -n "$ns" link add fv0 type veth peer name eth0 netns "$fns"
  ip -n "$ns" link set fv0 master br0
  ip -n "$fns" link set eth0 address "$MAC"
  ip -n "$fns" addr add 10.98.0.11/20 dev eth0
  qemu_base=(qemu-system-x86_64 -machine q35,graphics=off -accel tcg -cpu max -smp 1 -m 512 -nodefaults -display none
    -no-reboot -smbios "type=1,uuid=$UUID,serial=BENCH-1"
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no)
  # Answer iPXE's IPv6 router solicitation as the lab does (lab/ra_linux.go):
  # otherwise iPXE waits ~15 s for IPv6 autoconfiguration on every boot.
  # Stopped for the pxe-nora boots (P9).
  ra_pid=
  ra() {
    if [ "$1" = on ] && [ -z "$ra_pid" ]; then
      start "$ns" "$WORK/logs/p4-ra-$2.log" "$RB" __rackboot-lab-ra --interface br0; ra_pid=$PID
    elif [ "$1" = off ] && [ -n "$ra_pid" ]; then
      stop "$ra_pid"; ra_pid=
    fi
  }
  # configure_time SERIAL OUT: polls SERIAL every 0.1 s for iPXE's
  # "Configuring (net0 $MAC)" and then its "ok", and writes the seconds
  # between the two to OUT. Run in the background beside the boot.
  configure_time() {
    local t0= i
    for i in $(seq 3000); do
      # grep on the file, no pipe: with pipefail an early grep -q exit
      # would fail the pipeline. ".*" spans iPXE's dots and escapes.
      if [ -z "$t0" ]; then
        grep -aqF "Configuring (net0 $MAC)" "$1" 2>/dev/null && t0=$(date +%s.%N)
      elif grep -aqE "Configuring \(net0 $MAC\).*ok" "$1"; then
        awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.3f\n", b - a}' >"$2"
        return 0
      fi
      sleep 0.1
    done
  }
  # serve_fresh: a fresh serve per boot, so a machine that reported
  # "installed" is netbooted again, not sent to its disk.
  serve_fresh() {
    local st=$d/state-$1
    rm -rf "$st"; mkdir -p "$st"; fresh_state "$st"
    start "$ns" "$WORK/logs/p4-serve-$1.log" "$RB" -f "$RACK" --state "$st" serve -i br0 --dhcp full \
      --range 10.98.1.0-10.98.1.200 --router none --tftp-port 69 --standin "$STANDIN" --kernel-arg console=ttyS0
    serve_pid=$PID
    wait_http "$ns" http://10.98.0.1:8080/boot.ipxe "$serve_pid" "$WORK/logs/p4-serve-$1.log"
  }
  for r in $(seq "$ROUNDS"); do
    for s in "${variants[@]}"; do
      if [ $s = pxe-nora ]; then ra off; else ra on "$s-$r"; fi
      serve_fresh "$s-$r"
      rm -f "$d/nvme.img"; truncate -s 2G "$d/nvme.img"
      serial=$d/serial-$s-$r.log
      disk=(-drive "if=none,id=nv,format=raw,file=$d/nvme.img" -device nvme,drive=nv,serial=NVME-BENCH-1)
      if [ $s = direct ]; then
        # The kernel line rackboot's iPXE script would run, minus initrd=.
        ip -n "$ns" link set fv0 up; ip -n "$fns" link set eth0 up
        ip netns exec "$fns" busybox udhcpc -i eth0 -f -q -n -t 10 -T 1 -s /bin/true >>"$WORK/logs/p4-udhcpc.log" 2>&1 ||
          { cat "$WORK/logs/p4-udhcpc.log" >&2; die "P4: no DHCP lease for $MAC from rackboot (before the direct boot)"; }
        script=$(ip netns exec "$fns" curl -fsS --retry 5 --retry-connrefused --retry-delay 1 \
          "http://10.98.0.1:8080/ipxe?mac=${MAC//:/-}&uuid=$UUID&serial=BENCH-1&arch=x86_64&platform=pcbios")
        ip -n "$fns" link set eth0 down; ip -n "$ns" link set fv0 down
        args=$(awk '$1=="kernel" {for (i=3;i<=NF;i++) if ($i !~ /^initrd=/) printf "%s%s", (n++?" ":""), $i}' <<<"$script")
        [ -n "$args" ] || die "P4: no kernel line in the boot script: $script"
        # The same NIC (e1000 with its iPXE ROM, unused: -kernel boots first).
        cmd=("${qemu_base[@]}" -serial "file:$serial" -kernel "$STANDIN/vmlinuz" -initrd "$STANDIN/initramfs.cpio.gz"
          -append "$args" -device "e1000,netdev=n0,mac=$MAC" "${disk[@]}")
      else
        cmd=("${qemu_base[@]}" -serial "file:$serial" -boot n -device "e1000,netdev=n0,mac=$MAC,bootindex=1" "${disk[@]}")
      fi
      { printf 'ip netns exec %q ' "$ns"; printf '%q ' "${cmd[@]}"; printf '&& grep -aq %q %q\n' 'RACKBOOT-STANDIN-REPORT .*"result":"installed"' "$serial"; } >"$d/$s.sh"
      conf_pid=
      if [ $s != direct ]; then
        rm -f "$d/conf-$s-$r"
        configure_time "$serial" "$d/conf-$s-$r" &
        conf_pid=$!; PIDS+=("$conf_pid")
      fi
      if ! hyperfine -N --runs 1 --export-json "$d/h-$s-$r.json" --style none "timeout 300 bash $d/$s.sh" >>"$WORK/logs/p4-hyperfine.log" 2>&1; then
        tail -20 "$serial" >&2 || true
        die "P4 $s boot $r: no report line (serial log $serial, command $d/$s.sh)"
      fi
      line=$(jq -r '.results[0].mean' "$d/h-$s-$r.json" | awk '{printf "%.0f", $1*1e9}')
      if want P4 && [ $s != pxe-nora ]; then bline p4 "$s" "BenchmarkP4/boot 1 $line ns/op"; fi
      if want P9 && [ $s != direct ]; then bline p9 "$s" "BenchmarkP9/boot 1 $line ns/op"; fi
      log "P4 round $r/$ROUNDS $s: $(jq -r '.results[0].mean' "$d/h-$s-$r.json") s"
      if [ -n "$conf_pid" ]; then
        stop "$conf_pid"
        [ -s "$d/conf-$s-$r" ] || die "P9 $s boot $r: no \"Configuring (net0 $MAC) ... ok\" in $serial"
        if want P9; then bline p9 "$s" "$(awk '{printf "BenchmarkP9/configure 1 %.0f ns/op", $1*1e9}' "$d/conf-$s-$r")"; fi
        log "P9 round $r/$ROUNDS $s: iPXE Configuring → ok $(cat "$d/conf-$s-$r") s"
      fi
      stop "$serve_pid"
    done
  done
  ra off
  if want P4; then
    compare p4 pxe direct
    a=$(metric "$RES/p4/pxe.txt" P4/boot ns/op | median | awk '{print $1/1e9}')
    b=$(metric "$RES/p4/direct.txt" P4/boot ns/op | median | awk '{print $1/1e9}')
    judge p4 P4/boot sec/op '<=1.2'
    row "P4 netboot, QEMU start → stand-in report (installed) + power-off (s, median of $ROUNDS, TCG)" "PXE via rackboot $(fmt "$a") s" \
      "direct -kernel/-initrd $(fmt "$b") s" "$RATIO" "≤ 1.2× direct boot" "$(cell 1 "")"
  fi
  if want P9; then
    compare p9 pxe pxe-nora
    a=$(metric "$RES/p9/pxe.txt" P9/configure ns/op | median | awk '{print $1/1e9}')
    amax=$(metric "$RES/p9/pxe.txt" P9/configure ns/op | maxof | awk '{print $1/1e9}')
    b=$(metric "$RES/p9/pxe-nora.txt" P9/configure ns/op | median | awk '{print $1/1e9}')
    ba=$(metric "$RES/p9/pxe.txt" P9/boot ns/op | median | awk '{print $1/1e9}')
    bb=$(metric "$RES/p9/pxe-nora.txt" P9/boot ns/op | median | awk '{print $1/1e9}')
    judge p9 P9/configure sec/op '<=1.0' # the ratio only: the target is absolute
    row "P9 iPXE \"Configuring\" → ok (DHCP + IPv6 autoconf; s, median of $ROUNDS PXE boots, TCG; whole boot in brackets)" \
      "with the lab's RA responder $(fmt "$a") s ($(fmt "$ba") s)" "without it $(fmt "$b") s ($(fmt "$bb") s)" "$RATIO" \
      "< 6 s with the responder, every boot" "$(V=met; cell "$(allbelow "$RES/p9/pxe.txt" P9/configure ns/op 6e9)" "slowest $(fmt "$amax") s")"
  fi
fi

# ================================================================ P8 leader switch-over
# bench/switchover (a Go benchmark on internal/kubetest's real
# kube-apiserver + etcd): two `serve --kube --dhcp proxy` replicas on one
# bridge; kill -9 of the leader → the first OFFER from the other, per
# round. No external peer: the bound is the Lease's.
if want P8; then
  machine_mark P8
  log "P8: DHCP leader switch-over after kill -9, $ROUNDS rounds (lease ${P8_LEASE}s, renew ${P8_RENEW}s, retry ${P8_RETRY}s)"
  KUBETEST_BIN=$(scripts/kubetest-build.sh) || die "scripts/kubetest-build.sh failed: P8 needs the test kube-apiserver and etcd (make kubetest)"
  go test -c -o "$WORK/bin/switchover.test" ./bench/switchover
  (cd bench/switchover && RACKBOOT_KUBETEST_BIN=$KUBETEST_BIN "$WORK/bin/switchover.test" -test.run '^$' -test.bench Switchover \
    -test.benchtime 1x -test.v -test.timeout 60m -rackboot "$RB" -rounds "$ROUNDS" \
    -lease-duration "${P8_LEASE}s" -renew-deadline "${P8_RENEW}s" -retry-period "${P8_RETRY}s") >"$WORK/logs/p8.log" 2>&1 ||
    { tail -40 "$WORK/logs/p8.log" >&2; die "P8: bench/switchover failed (log $WORK/logs/p8.log)"; }
  grep -a '^BenchmarkP8/' "$WORK/logs/p8.log" | while read -r line; do bline p8 rackboot "$line"; done
  [ "$(wc -l <"$RES/p8/rackboot.txt")" = "$ROUNDS" ] || die "P8: $(wc -l <"$RES/p8/rackboot.txt") result lines for $ROUNDS rounds"
  { echo "== P8: rackboot (the bound is in the table)"; (cd "$RES/p8" && "$BENCHSTAT" rackboot.txt 2>&1) || echo "(benchstat failed)"; echo; } >>"$STAT"
  bound=$(awk -v l="$P8_LEASE" -v r="$P8_RETRY" 'BEGIN {print l + 2.2 * r + 1}')
  a=$(metric "$RES/p8/rackboot.txt" P8/switchover ns/op | median | awk '{print $1/1e9}')
  amax=$(metric "$RES/p8/rackboot.txt" P8/switchover ns/op | maxof | awk '{print $1/1e9}')
  V=met
  row "P8 DHCP leader switch-over: kill -9 of the leading \`serve --kube\` → first OFFER from the other replica (s, median / worst of $ROUNDS)" \
    "$(fmt "$a" 2) / $(fmt "$amax" 2) s" "bound $(fmt "$bound" 1) s: lease ${P8_LEASE} s + 2.2 × retry ${P8_RETRY} s + 1 s probe" \
    "$(awk -v a="$a" -v b="$bound" 'BEGIN {printf "%.2f× (median ÷ bound)", a/b}')" "< the bound in every round" \
    "$(cell "$(allbelow "$RES/p8/rackboot.txt" P8/switchover ns/op "$(awk -v b="$bound" 'BEGIN {printf "%.0f", b*1e9}')")" "worst $(fmt "$amax" 2) s")"
fi

# ================================================================ report
machine_mark end
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$SECONDS
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
HEADER=$(awk '/^<!-- results below/ {exit} {print}' "$OUT" 2>/dev/null || true)
[ -n "$HEADER" ] || HEADER="# Benchmarks"
{
  echo "$HEADER"
  echo "<!-- results below: generated by scripts/bench.sh; edit the text above only -->"
  echo
  echo "## Results"
  echo
  echo "**This run took $((ELAPSED / 60)) min $((ELAPSED % 60)) s** (rows: $ONLY; $ROUNDS A/B rounds per pair, $SHORT_ROUNDS for P2 through the delay link, P3 and P5, $(p2_rounds veth) for P2 over the veth, $P6_RUNS runs for P6)."
  echo "Machine: $(nproc) cores, $CPU, kernel $(uname -r), $(. /etc/os-release && echo "$PRETTY_NAME"). Started $STARTED."
  echo "Load average (1/5/15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER. Rackboot: \`$("$RB" --version 2>/dev/null || echo "$RB")\`."
  [ ${#MACHINE[@]} -gt 0 ] && echo "The machine during each section (CPU time the host took, and one core hashing 128 MiB before → after; compare these between runs before comparing rows): $(IFS=';'; echo "${MACHINE[*]}" | sed 's/;/; /g')."
  [ "$QUICK" = 1 ] && echo "**Quick run (BENCH_QUICK=1): $ROUNDS short rounds per row; numbers are for checking the harness only.**"
  echo
  echo "Verdicts: \"met\" / \"missed\" from benchstat's comparison of all rounds (its significance test for a 1× target, the range of rackboot ÷ peer its 95 % confidence intervals allow for another), and absolute targets checked on every run; \"no significant difference\" where the rounds cannot tell."
  echo
  echo "| row | rackboot | peer | ratio rackboot ÷ peer [range from the confidence intervals] | target | verdict |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "Reproduce: \`sudo make bench\` (all rows) or \`sudo BENCH_ONLY=\"P5\" scripts/bench.sh\` (one row); \`BENCH_ROUNDS=N\` changes the rounds; \`BENCH_KEEP=1\` keeps the logs and raw results."
  echo
  echo "### benchstat (rackboot is the base; the peer's column shows its difference)"
  echo
  echo '```'
  cat "$STAT"
  echo '```'
  echo
  echo "### Raw results (Go benchmark format, one line per run)"
  echo
  echo '```'
  for f in "$RES"/*/*.txt; do [ -e "$f" ] || continue; echo "== $(basename "$(dirname "$f")" | tr a-z A-Z) $(basename "$f" .txt)"; cat "$f"; done
  echo '```'
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "wrote $OUT in $ELAPSED s"

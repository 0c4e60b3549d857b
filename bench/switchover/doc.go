// Package switchover holds `make bench`'s P8 row: how long DHCP is
// unanswered after kill -9 of the `rackboot serve --kube` replica that
// leads, against the real kube-apiserver (internal/kubetest). It is a Go
// benchmark (not run by `go test` without -bench):
//
//	go test ./bench/switchover -run '^$' -bench Switchover -benchtime 1x \
//	    -args -rackboot "$PWD/bin/rackboot" -rounds 6
//
// It prints one Go benchmark line per round, BenchmarkP8/switchover, for
// benchstat. Root is needed (network namespaces), and the test API server
// (scripts/kubetest-build.sh).
package switchover

// Command etcd is etcd v3.6.5 built from its pinned Go module, for the
// rackboot test harness (internal/kubetest) only.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }

// Command etcd is the etcd server of the local test bed, built from the Go
// module proxy because Debian's etcd is older than Kubernetes supports.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }

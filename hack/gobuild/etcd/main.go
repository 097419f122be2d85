// Wrapper module: builds etcd from Go modules (etcd's server module carries
// replace directives, so it cannot be `go install`ed directly).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}

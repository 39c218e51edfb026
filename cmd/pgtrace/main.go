// Command pgtrace is a PostgreSQL wire-protocol proxy that turns the traffic
// between an application and its database into OpenTelemetry traces and
// metrics. Run `pgtrace --help` for the commands and `pgtrace serve --help`
// for the flags.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(execute(context.Background(), os.Args, os.Stdin, os.Stdout, os.Stderr))
}

// Command memberd is the consortium member appliance and relay.
//
// The binary is deliberately thin: all wiring lives in package app so that it
// can be tested without building a binary.
package main

import (
	"os"

	"github.com/memberd/memberd/cmd/memberd/app"
)

func main() {
	os.Exit(app.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

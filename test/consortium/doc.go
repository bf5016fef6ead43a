// Package consortium holds whole-consortium integration tests and
// benchmarks: real relays and appliances on loopback, wired as 'memberd
// relay' and 'memberd run' wire them (see consortium_test.go).
package consortium

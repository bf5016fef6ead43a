package consortium_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every relay, appliance and tunnel goroutine must be gone after each test
// package run.
func TestMain(m *testing.M) { goleak.VerifyTestMain(removeBinAfter{m}) }

// removeBinAfter runs the tests, then removes the memberd binary they built.
type removeBinAfter struct{ m *testing.M }

func (r removeBinAfter) Run() int {
	defer removeBuiltBinary()
	return r.m.Run()
}

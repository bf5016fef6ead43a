package consortium_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every relay, appliance and tunnel goroutine must be gone after each test
// package run.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

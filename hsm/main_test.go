package hsm_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind
// (signers in flight).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

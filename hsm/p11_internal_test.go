//go:build cgo

package hsm

import (
	"fmt"
	"testing"

	"github.com/miekg/pkcs11"
)

// TestErrorClasses pins which PKCS#11 errors drop a session (and re-find
// the token by label) instead of failing every later signature.
func TestErrorClasses(t *testing.T) {
	for _, tc := range []struct {
		rv                 uint
		session, findToken bool
	}{
		{pkcs11.CKR_SESSION_HANDLE_INVALID, true, false},
		{pkcs11.CKR_SESSION_CLOSED, true, false},
		{pkcs11.CKR_DEVICE_REMOVED, true, true},
		{pkcs11.CKR_TOKEN_NOT_PRESENT, true, true},
		{pkcs11.CKR_DEVICE_ERROR, true, false},
		{pkcs11.CKR_PIN_INCORRECT, false, false},
		{pkcs11.CKR_KEY_HANDLE_INVALID, false, false},
		{pkcs11.CKR_GENERAL_ERROR, false, false},
	} {
		err := fmt.Errorf("wrapped: %w", pkcs11.Error(tc.rv))
		if got := sessionLost(err); got != tc.session {
			t.Errorf("sessionLost(%v) = %v", err, got)
		}
		if got := tokenLost(err); got != tc.findToken {
			t.Errorf("tokenLost(%v) = %v", err, got)
		}
	}
	if sessionLost(nil) || tokenLost(fmt.Errorf("plain")) {
		t.Error("non-PKCS#11 errors classified as lost sessions")
	}
}

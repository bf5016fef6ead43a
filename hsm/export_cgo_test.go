//go:build cgo

package hsm

// OpenSessions returns how many PKCS#11 sessions a signer from OpenSigner
// holds open (busy or idle).
func OpenSessions(s Signer) int { return len(s.(*p11Signer).pool.sem) }

//go:build cgo

package hsm

import "github.com/miekg/pkcs11"

type sessionHandle = pkcs11.SessionHandle

// OpenSessions returns how many PKCS#11 sessions a signer from OpenSigner
// holds open (busy or idle).
func OpenSessions(s Signer) int { return len(s.(*p11Signer).pool.sem) }

// HoldSessions takes n sessions from a signer's pool at once (opening them
// as needed, blocking at the bound) and returns a function putting them back.
func HoldSessions(s Signer, n int) (release func(), err error) {
	p := s.(*p11Signer).pool
	var held []uint
	for i := 0; i < n; i++ {
		sh, err := p.get()
		if err != nil {
			for _, h := range held {
				p.put(sessionHandle(h))
			}
			return nil, err
		}
		held = append(held, uint(sh))
	}
	return func() {
		for _, h := range held {
			p.put(sessionHandle(h))
		}
	}, nil
}

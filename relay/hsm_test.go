package relay

import (
	"testing"
	"time"

	"github.com/memberd/memberd/hsm/hsmtest"
	"github.com/memberd/memberd/internal/testpki"
)

// A member whose TLS client key lives in a real SoftHSM2 token connects
// and exchanges packets: the relay client signs the TLS handshake through
// the HSM's crypto.Signer.
func TestSoftHSMClientKey(t *testing.T) {
	n := newTestNet(t, []string{"bank-a", "bank-b"}, []string{"relay-1"})
	n.startRelay("relay-1", nil)
	signer := hsmtest.NewToken(t, "bank-a").NewKey(t, "tls")
	cert := n.cas["bank-a"].Issue(t, "bank-a-appliance", testpki.Key(signer)).TLS()
	a := n.client(cert, nil)
	b := n.member("bank-b", nil)
	ra, rb := readAll(a), readAll(b)
	waitReady(t, a, b)
	deliver(t, a, "bank-b", rb, "bank-a", "hsm-signed", 5*time.Second)
	deliver(t, b, "bank-a", ra, "bank-b", "to-hsm-member", 5*time.Second)
}

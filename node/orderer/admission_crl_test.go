package orderer

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// TestAdmissionRefusesCRLRevoked: a client certificate that its member
// CA's CRL (members[].crls) lists is refused for Broadcast and Deliver from
// the policy version that carries the CRL on, as a stock peer refuses it;
// the member's other clients stay admitted.
func TestAdmissionRefusesCRLRevoked(t *testing.T) {
	c := newConsortium(t, 3, block.CutterConfig{})
	lost, kept := c.identity(t, "m1", "lost"), c.identity(t, "m1", "kept")
	a := newAdmitter("trade", 0, c.policy, time.Now)
	check := func(id Identity) (broadcast, deliver error) {
		t.Helper()
		envs, _ := envelopes(t, id, 1, 10)
		raw, err := proto.Marshal(envs[0])
		if err != nil {
			t.Fatal(err)
		}
		env, broadcast := a.admitBroadcast(raw)
		if env == nil {
			if env, err = block.ParseEnvelope(raw); err != nil {
				t.Fatal(err)
			}
		}
		return broadcast, a.authenticate(env, readerRoles...)
	}
	if b, d := check(lost); b != nil || d != nil {
		t.Fatalf("before the CRL: broadcast %v, deliver %v", b, d)
	}
	c.cur.Store(c.cons.Next(t, c.pol, func(d *policy.Document) { d.Members[0].CRLs = c.cons.CAs["m1"].CRL(t, 1, lost.Cert) }))
	b, d := check(lost)
	for what, err := range map[string]error{"broadcast": b, "deliver": d} {
		// The policy's reason stays an error (policy.ErrRevoked), and the
		// message says revoked, not that the member CA is unknown.
		if !errors.Is(err, ErrForbidden) || !errors.Is(err, policy.ErrRevoked) || !strings.Contains(err.Error(), "is revoked by policy version 2") {
			t.Fatalf("%s of a CRL-revoked client: %v, want ErrForbidden wrapping policy.ErrRevoked, revoked by policy version 2", what, err)
		}
		if strings.Contains(err.Error(), "not issued by a member CA") {
			t.Fatalf("%s of a CRL-revoked client: %v: a certificate of a member CA named as not issued by one", what, err)
		}
	}
	t.Log(b)
	if b, d := check(kept); b != nil || d != nil {
		t.Fatalf("an unrevoked client of the same member: broadcast %v, deliver %v", b, d)
	}
}

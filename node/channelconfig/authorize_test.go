package channelconfig

import (
	"crypto/rand"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/policy"
)

// signUpdate signs u's ConfigUpdate as a new identity of member's CA with
// OU ou, and returns the signature, checked valid.
func (f *updateFixture) signUpdate(t *testing.T, u *Update, member, ou string) *common.ConfigSignature {
	t.Helper()
	leaf := f.c.CAs[member].Issue(t, member+" "+ou, testpki.OU(ou))
	id, err := proto.Marshal(&msp.SerializedIdentity{Mspid: f.genesis.Member(member).MSPID, IdBytes: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf.Cert.Raw})})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := SignConfigUpdate(u, Signer{Key: leaf.Key, Identity: id}, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cub, _ := u.ConfigUpdateBytes()
	valid, invalid := ConfigSignatures(cub, [][]byte{raw})
	if len(valid) != 1 {
		t.Fatalf("own signature invalid: %v", invalid)
	}
	return valid[0]
}

// TestCheckUpdateSigned: a ConfigUpdate needs the admins its changes'
// mod_policies name (Admins: a MAJORITY of the orgs' admins), as a stock
// peer evaluates it; signatures by non-admin identities do not count.
func TestCheckUpdateSigned(t *testing.T) {
	f := newUpdateFixture(t)
	in, err := ParseConfig("trade", f.inForce)
	if err != nil {
		t.Fatal(err)
	}
	sign := func(u *Update, member, ou string) *common.ConfigSignature { return f.signUpdate(t, u, member, ou) }
	batch, err := NextFromPolicy(f.inForce, "trade", f.c.Next(t, f.genesis, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 7 }), nil)
	if err != nil {
		t.Fatal(err)
	}
	member, err := NextFromPolicy(f.inForce, "trade", f.c.Next(t, f.genesis, func(d *policy.Document) {
		d.Members = append(d.Members, f.c.NewMember(t, "m4"))
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		u    *Update
		sigs []*common.ConfigSignature
		ok   bool
	}{
		{"batch size, no signature", batch, nil, false},
		{"batch size, one admin of three", batch, []*common.ConfigSignature{sign(batch, "m1", AdminOU)}, false},
		{"batch size, two admins of three", batch, []*common.ConfigSignature{sign(batch, "m1", AdminOU), sign(batch, "m2", AdminOU)}, true},
		{"batch size, one admin and a client", batch, []*common.ConfigSignature{sign(batch, "m1", AdminOU), sign(batch, "m2", ClientOU)}, false},
		{"batch size, two admins of one org", batch, []*common.ConfigSignature{sign(batch, "m1", AdminOU), sign(batch, "m1", AdminOU)}, false},
		{"new member, one admin", member, []*common.ConfigSignature{sign(member, "m3", AdminOU)}, false},
		{"new member, two admins", member, []*common.ConfigSignature{sign(member, "m3", AdminOU), sign(member, "m2", AdminOU)}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := in.CheckUpdateSigned(tc.u, tc.sigs)
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok && !errors.Is(err, ErrUnderSigned) {
				t.Fatalf("got %v, want ErrUnderSigned", err)
			}
			t.Log(err)
		})
	}
}

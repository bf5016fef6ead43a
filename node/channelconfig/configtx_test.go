package channelconfig

import (
	"crypto/rand"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
)

// TestCheckConfigBlock: a config block built by ConfigTransaction passes the
// check against the update it carries and fails, naming the mismatch, when
// the Config or the ConfigUpdate differs in anything.
func TestCheckConfigBlock(t *testing.T) {
	f := newUpdateFixture(t)
	p := f.c.Next(t, f.genesis, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 7 })
	u, err := NextFromPolicy(f.inForce, "trade", p, nil)
	if err != nil {
		t.Fatal(err)
	}
	admin := testpki.SelfSigned(t, "admin", testpki.Valid(time.Unix(1600000000, 0), time.Unix(2000000000, 0)))
	creator, err := proto.Marshal(&msp.SerializedIdentity{Mspid: "m1MSP", IdBytes: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: admin.Cert.Raw})})
	if err != nil {
		t.Fatal(err)
	}
	s := Signer{Key: admin.Key, Identity: creator}
	// build makes a config block of u with the admin signatures sigs.
	build := func(u *Update, sigs ...[]byte) *common.Block {
		var css []*common.ConfigSignature
		for _, raw := range sigs {
			cs := new(common.ConfigSignature)
			if err := proto.Unmarshal(raw, cs); err != nil {
				t.Fatal(err)
			}
			css = append(css, cs)
		}
		env, err := ConfigTransaction(u, css, s, time.Unix(1700000000, 0), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return block.New(1, []byte("prev"), [][]byte{env})
	}
	if err := CheckConfigBlock(build(u), u); err != nil {
		t.Fatalf("a block of the update itself: %v", err)
	}
	ce, cue, err := ConfigTransactionOf(build(u))
	if err != nil {
		t.Fatal(err)
	}
	if ce.Config.Sequence != 1 || ce.LastUpdate == nil {
		t.Fatalf("config envelope: sequence %d, last update %v", ce.Config.Sequence, ce.LastUpdate)
	}
	var cu common.ConfigUpdate
	if err := proto.Unmarshal(cue.ConfigUpdate, &cu); err != nil || !proto.Equal(&cu, u.ConfigUpdate) {
		t.Fatalf("LastUpdate does not carry the config update: %v", err)
	}

	other := f.c.Next(t, f.genesis, func(d *policy.Document) { d.Ledger.BatchSize.MaxMessageCount = 8 })
	uo, err := NextFromPolicy(f.inForce, "trade", other, nil)
	if err != nil {
		t.Fatal(err)
	}
	seq := proto.Clone(u.Config).(*common.Config)
	seq.Sequence = 5
	delta := proto.Clone(u.ConfigUpdate).(*common.ConfigUpdate)
	delta.IsolatedData = map[string][]byte{"x": {1}}
	cases := map[string]*Update{
		"another policy version": uo,
		"another sequence":       {Config: seq, ConfigUpdate: u.ConfigUpdate},
		"another delta":          {Config: u.Config, ConfigUpdate: delta},
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			err := CheckConfigBlock(build(bad), u)
			if !errors.Is(err, ErrConfigMismatch) {
				t.Fatalf("got %v, want ErrConfigMismatch", err)
			}
			t.Log(err)
		})
	}
	if err := CheckConfigBlock(block.New(1, nil, [][]byte{[]byte("junk")}), u); !errors.Is(err, ErrConfig) {
		t.Fatalf("not a config block: %v", err)
	}

	// Admin signatures: valid on their own update only; a block carrying
	// one that does not verify is refused.
	own, err := SignConfigUpdate(u, s, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := SignConfigUpdate(uo, s, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cub, err := u.ConfigUpdateBytes()
	if err != nil {
		t.Fatal(err)
	}
	valid, invalid := ConfigSignatures(cub, [][]byte{own, foreign, []byte("junk")})
	if len(valid) != 1 || len(invalid) != 2 {
		t.Fatalf("%d valid, %d invalid config signatures, want 1 and 2: %v", len(valid), len(invalid), invalid)
	}
	if err := CheckConfigBlock(build(u, own), u); err != nil {
		t.Fatalf("block with a valid admin signature: %v", err)
	}
	if err := CheckConfigBlock(build(u, own, foreign), u); !errors.Is(err, ErrConfigMismatch) {
		t.Fatalf("block with an admin signature on another update: %v, want ErrConfigMismatch", err)
	}
}

package channelconfig

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"github.com/hyperledger/fabric-protos-go-apiv2/msp"
	"google.golang.org/protobuf/proto"

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
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	creator, err := proto.Marshal(&msp.SerializedIdentity{Mspid: "m1MSP", IdBytes: []byte("a certificate")})
	if err != nil {
		t.Fatal(err)
	}
	s := Signer{Key: key, Identity: creator}
	build := func(u *Update) *common.Block {
		env, err := ConfigTransaction(u, nil, s, time.Unix(1700000000, 0), rand.Reader)
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
}

package appliance

import (
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// TestLoadGenesisBlocks: ledger.genesis_block and ledger.genesis_blocks give
// one genesis block per channel of ledger.channels, found by the channel
// each block names; a block of a channel the policy lacks, or a second
// block of a channel, is refused with the key and the channels named.
func TestLoadGenesisBlocks(t *testing.T) {
	c := policytest.New(t, 3)
	single := c.Genesis(t)
	p := policytest.MustParse(t, c.NextDocument(t, single, func(d *policy.Document) {
		d.Ledger.Channel = ""
		d.Ledger.Channels = []*policy.Channel{
			{Name: "alpha", Consenters: []string{"m1", "m2", "m3"}},
			{Name: "beta", Consenters: []string{"m2"}, Members: []string{"m2", "m3"}},
		}
	}))
	dir := t.TempDir()
	tls := map[string]channelconfig.Consenter{}
	for _, id := range policytest.Members(3) {
		cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.CAs[id].Issue(t, id+" tls").Cert.Raw})
		tls[id] = channelconfig.Consenter{ClientTLSCert: cert, ServerTLSCert: cert}
	}
	write := func(v *policy.Policy, name string) string {
		cc, err := channelconfig.FromPolicy(v, tls)
		if err != nil {
			t.Fatal(err)
		}
		b, err := channelconfig.GenesisBlock(cc, time.Unix(1700000000, 0), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		raw, err := block.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), raw, 0o644); err != nil {
			t.Fatal(err)
		}
		return name
	}
	view := func(ch string) *policy.Policy {
		v, err := p.ForChannel(ch)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	alpha, beta, trade := write(view("alpha"), "alpha.block"), write(view("beta"), "beta.block"), write(single, "trade.block")
	load := func(one string, more ...string) (map[string]string, error) {
		cfg := &Config{Dir: dir, Ledger: &LedgerConfig{GenesisBlock: one, GenesisBlocks: more}}
		got, err := loadGenesisBlocks(cfg, p)
		names := map[string]string{}
		for ch, b := range got {
			names[ch] = channelOf(b)
		}
		return names, err
	}
	if got, err := load(alpha, beta); err != nil || len(got) != 2 || got["alpha"] != "alpha" || got["beta"] != "beta" {
		t.Fatalf("genesis_block alpha, genesis_blocks [beta]: %v, %v", got, err)
	}
	if got, err := load("", beta); err != nil || len(got) != 1 || got["beta"] != "beta" {
		t.Fatalf("genesis_blocks [beta]: %v, %v", got, err)
	}
	for _, tc := range []struct {
		name      string
		one       string
		more      []string
		wantInErr string
	}{
		{"channel the policy lacks", "", []string{alpha, trade}, `key ledger.genesis_blocks: ` + filepath.Join(dir, trade) + ` is the genesis block of channel "trade", which is not in the policy's ledger.channels (alpha, beta)`},
		{"two blocks of a channel", alpha, []string{beta, alpha}, `key ledger.genesis_blocks: ` + filepath.Join(dir, alpha) + ` is a second genesis block of channel "alpha"`},
		{"missing file", "", []string{"nope.block"}, "key ledger.genesis_blocks"},
	} {
		if _, err := load(tc.one, tc.more...); err == nil || !strings.Contains(err.Error(), tc.wantInErr) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.wantInErr)
		}
	}
	// A single-channel policy keeps its message.
	cfg := &Config{Dir: dir, Ledger: &LedgerConfig{GenesisBlock: alpha}}
	if _, err := loadGenesisBlocks(cfg, single); err == nil || !strings.Contains(err.Error(), `channel "alpha", but the policy's ledger.channel is "trade"`) {
		t.Errorf("alpha's block with a single-channel policy: %v", err)
	}
}

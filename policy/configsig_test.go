package policy_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/policy/policytest"
)

// TestConfigSignatures: #cfgsig lines survive Parse and Marshal, do not
// change the version's hash or its document signatures, one per admin;
// malformed ones are refused.
func TestConfigSignatures(t *testing.T) {
	c := policytest.New(t, 3)
	p := c.Genesis(t)
	q := p.WithConfigSignature(policy.ConfigSignature{Member: "m1", KeyID: "a1", Raw: []byte("first")}).
		WithConfigSignature(policy.ConfigSignature{Member: "m2", KeyID: "a1", Raw: []byte("second")}).
		WithConfigSignature(policy.ConfigSignature{Member: "m1", KeyID: "a1", Raw: []byte("replaced")})
	raw := q.Marshal()
	r, err := policy.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if r.Hash() != p.Hash() || len(r.Signatures()) != len(p.Signatures()) {
		t.Fatalf("hash %s with %d signatures, want %s with %d", r.Hash(), len(r.Signatures()), p.Hash(), len(p.Signatures()))
	}
	got := r.ConfigSignatures()
	if len(got) != 2 || got[0].Member != "m2" || string(got[0].Raw) != "second" || got[1].Member != "m1" || string(got[1].Raw) != "replaced" {
		t.Fatalf("config signatures %+v", got)
	}
	if !bytes.Equal(r.Marshal(), raw) {
		t.Fatal("Marshal of the parsed bundle differs")
	}
	for name, line := range map[string]string{
		"two fields": "#cfgsig m1 AAAA\n",
		"bad base64": "#cfgsig m1 a1 !!!\n",
		"bad member": "#cfgsig M/1 a1 AAAA\n",
		"too long":   "#cfgsig m1 a1 " + string(bytes.Repeat([]byte("A"), 20000)) + "\n",
		"not a sig":  "#cfg m1 a1 AAAA\n",
	} {
		bad := append(bytes.Clone(raw), line...) // after the marker
		if _, err := policy.Parse(bad); !errors.Is(err, policy.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

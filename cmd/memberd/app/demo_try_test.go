package app

import (
	"strings"
	"testing"

	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/policy"
)

// TestDemoTryLinesChannels: a multi-channel demo's try lines submit to
// each channel the first member belongs to, never to an empty --channel.
func TestDemoTryLinesChannels(t *testing.T) {
	L, err := demo.Init(demo.Options{Dir: t.TempDir(), Members: 2, Relays: 1, HSM: "soft", Relay: []string{"127.0.0.1:1"},
		Channels: []*policy.Channel{{Name: "alpha"}, {Name: "beta", Members: []string{"member-a", "member-b"}}, {Name: "gamma", Consenters: []string{"member-b"}, Members: []string{"member-b"}}}})
	if err != nil {
		t.Fatal(err)
	}
	var submits []string
	for _, l := range demoTryLines(L) {
		if strings.HasPrefix(l, "memberd ledger submit ") {
			submits = append(submits, l)
		}
	}
	if len(submits) != 2 || !strings.Contains(submits[0], "--channel alpha ") || !strings.Contains(submits[1], "--channel beta ") {
		t.Fatalf("submit lines %q, want one for alpha and one for beta", submits)
	}
}

package tunnel_test

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/tunnel"
	"github.com/memberd/memberd/tunnel/tunneltest"
)

// TestRemovedMemberCutOff: a policy update without bank-c removes its peer
// at once, closes its connections, and it can no longer connect; the other
// members keep working.
func TestRemovedMemberCutOff(t *testing.T) {
	c := newCluster(t, 3, clusterOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b, cc := c.devs["bank-a"], c.devs["bank-b"], c.devs["bank-c"]
	aSide, cSide := connect(t, ctx, a, cc, "bank-c", 7050)
	if err := transfer(ctx, aSide, cSide, 64<<10, 5); err != nil {
		t.Fatal(err)
	}

	without := tunneltest.NewAuthority(c.specs[:2], nil)
	start := time.Now()
	a.SetAuthority(without)
	b.SetAuthority(without)

	// a's end is closed at once.
	aSide.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := aSide.Read(make([]byte, 1)); err == nil || errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		t.Fatalf("a's connection to the removed member still open: %v", err)
	}
	t.Logf("connection closed %v after the policy update", time.Since(start))
	for _, d := range []*tunnel.Device{a, b} {
		for _, p := range d.Peers() {
			if p.Member == "bank-c" {
				t.Fatalf("peer bank-c still configured: %+v", p)
			}
		}
	}
	// c's writes go nowhere: nothing it sends reaches a.
	cSide.SetWriteDeadline(time.Now().Add(time.Second))
	cSide.Write([]byte("still there?"))
	// c cannot open a new connection to a.
	ln, err := a.Listen(7051)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dctx, dcancel := context.WithTimeout(ctx, 3*time.Second)
	defer dcancel()
	if conn, err := cc.Dial(dctx, "bank-a", 7051); err == nil {
		conn.Close()
		t.Fatal("removed member connected")
	}
	// a no longer dials it.
	if _, err := a.Dial(ctx, "bank-c", 7050); !errors.Is(err, tunnel.ErrNotMember) {
		t.Fatalf("dial removed member: %v, want ErrNotMember", err)
	}
	// Its fresh announcements are refused.
	before := a.Stats().AttestationsRefused
	cc.SetAuthority(c.auth) // makes c announce again
	deadline := time.Now().Add(5 * time.Second)
	for a.Stats().AttestationsRefused == before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if a.Stats().AttestationsRefused == before {
		t.Fatal("announcement from the removed member not refused")
	}
	// a and b still talk.
	x, y := connect(t, ctx, a, b, "bank-b", 7052)
	if err := transfer(ctx, x, y, 64<<10, 6); err != nil {
		t.Fatal(err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestACL(t *testing.T) {
	// bank-a may reach bank-b on 7050 only.
	acl := func(from, to string, port uint16) bool { return port == 7050 || port == 7051 }
	c := newCluster(t, 2, clusterOpts{acl: acl})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, b := c.devs["bank-a"], c.devs["bank-b"]

	t.Run("dial denied", func(t *testing.T) {
		ln, err := b.Listen(22)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		_, err = a.Dial(ctx, "bank-b", 22)
		if !errors.Is(err, tunnel.ErrDenied) {
			t.Fatalf("Dial = %v, want ErrDenied", err)
		}
		t.Log(err)
	})
	t.Run("accept denied by the receiving side", func(t *testing.T) {
		// b's policy no longer allows 7051; a still believes it may.
		b.SetAuthority(tunneltest.NewAuthority(c.specs, func(from, to string, port uint16) bool { return port == 7050 }))
		ln, err := b.Listen(7051)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			if conn, err := ln.Accept(); err == nil {
				accepted <- conn
			}
		}()
		denied := b.Stats().ACLDenied
		conn, err := a.Dial(ctx, "bank-b", 7051)
		if err != nil {
			t.Fatalf("dial: %v", err) // TCP connects, then b closes it
		}
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(conn)
		if isTimeout(err) {
			t.Fatal("connection not closed by the receiving side")
		}
		select {
		case <-accepted:
			t.Fatal("denied connection was accepted")
		case <-time.After(100 * time.Millisecond):
		}
		if b.Stats().ACLDenied == denied {
			t.Fatal("denial not counted")
		}
	})
	t.Run("allowed", func(t *testing.T) {
		x, y := connect(t, ctx, a, b, "bank-b", 7050)
		if err := transfer(ctx, x, y, 1<<10, 7); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRogueAnnouncements: a member that forges or misattributes
// attestations gets no peer.
func TestRogueAnnouncements(t *testing.T) {
	c := newCluster(t, 2, clusterOpts{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.waitPeers(ctx)
	a := c.devs["bank-a"]
	// bank-c is in the policy but its real appliance is not running; an
	// attacker holds its transport attachment (e.g. a stolen relay session).
	specs := append(c.specs, tunneltest.MemberSpec{ID: "bank-c", Addr: c.specs[1].Addr.Next().Next(), CA: testpki.NewCA(t, "bank-c")})
	auth := tunneltest.NewAuthority(specs, nil)
	a.SetAuthority(auth)
	rogue := c.net.Transport("bank-c")
	defer rogue.Close()
	now := time.Now()
	k, _ := tunnel.NewPrivateKey()
	bSigner, bChain := c.specs[1].CA.Issue(t, "appliance").Identity()
	otherCA := testpki.NewCA(t, "bank-c")
	oSigner, oChain := otherCA.Issue(t, "appliance").Identity()
	cases := map[string]*tunnel.Attestation{}
	var err error
	// Valid attestation of bank-b, replayed by bank-c's attachment.
	if cases["sender"], err = tunnel.SignAttestation(bSigner, bChain, "bank-b", k.PublicKey(), now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// bank-c's name, certificate from a CA the policy does not pin.
	if cases["identity"], err = tunnel.SignAttestation(oSigner, oChain, "bank-c", k.PublicKey(), now, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for name, att := range cases {
		before := a.Stats().AttestationsRefused
		for _, p := range tunnel.AnnouncePackets(att.Marshal(), true, rogue.MaxPacketSize()) {
			if err := rogue.WritePacket(p, "bank-a"); err != nil {
				t.Fatal(err)
			}
		}
		for a.Stats().AttestationsRefused == before && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: not refused", name)
		}
	}
	for _, p := range a.Peers() {
		if p.Member == "bank-c" || p.PublicKey == k.PublicKey() {
			t.Fatalf("rogue peer configured: %+v", p)
		}
	}
}

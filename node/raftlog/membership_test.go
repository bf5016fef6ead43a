package raftlog

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestAddAndRemovePeer(t *testing.T) {
	c := newCluster(t, 3, func(cfg *Config) { cfg.SnapshotEvery = 50; cfg.CatchUpEntries = 10 })
	lead := c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.propose(ctx, "a", 4, 200, nil)

	// Node 4 joins with an empty directory; the log was compacted, so it
	// catches up through a snapshot.
	if err := c.nodes[lead].node().AddPeer(ctx, Peer{ID: 4, Addr: "n4"}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
	c.size = 4
	tn := &testNode{id: 4, dir: filepath.Join(t.TempDir(), "n4"), app: &testApp{}}
	tn.app.fetch = c.fetchFrom(4)
	c.nodes[4] = tn
	c.tune = func(cfg *Config) {
		cfg.SnapshotEvery = 50
		cfg.CatchUpEntries = 10
		cfg.Join = cfg.ID == 4
	}
	c.start(4)
	c.propose(ctx, "b", 4, 100, nil)
	c.waitApplied(300, 30*time.Second)
	c.checkIdentical()
	if tn.app.snaps == 0 {
		t.Errorf("new node caught up without a snapshot")
	}
	st := c.nodes[lead].node().Status()
	if !slices.Equal(sorted(st.Voters), []uint64{1, 2, 3, 4}) {
		t.Fatalf("voters after AddPeer: %v", st.Voters)
	}

	// Membership survives a restart even though the application is past
	// the conf change (Config.Applied): raft must still see it.
	other := uint64(1)
	if other == lead {
		other = 2
	}
	c.stop(other)
	c.start(other)
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(sorted(c.nodes[other].node().Status().Voters), []uint64{1, 2, 3, 4}) {
		if time.Now().After(deadline) {
			t.Fatalf("voters on restarted node %d: %v", other, c.nodes[other].node().Status().Voters)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Remove it again; the remaining three keep committing.
	lead = c.leader(10 * time.Second)
	if err := c.nodes[lead].node().RemovePeer(ctx, 4); err != nil {
		t.Fatalf("RemovePeer: %v", err)
	}
	c.stop(4)
	delete(c.nodes, 4)
	c.size = 3
	c.propose(ctx, "c", 3, 60, nil)
	c.waitApplied(360, 30*time.Second)
	c.checkIdentical()
	if v := sorted(c.nodes[lead].node().Status().Voters); !slices.Equal(v, []uint64{1, 2, 3}) {
		t.Fatalf("voters after RemovePeer: %v", v)
	}
}

func sorted(v []uint64) []uint64 {
	v = slices.Clone(v)
	slices.Sort(v)
	return v
}

// TestClusterOverTLS: the optional TLS layer (for use without the tunnel).
func TestClusterOverTLS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "consenter"},
		DNSNames: []string{"consenter"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	tc := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	c := newCluster(t, 3, func(cfg *Config) {
		cfg.ClientTLS = &tls.Config{Certificates: []tls.Certificate{tc}, RootCAs: pool, ServerName: "consenter", MinVersion: tls.VersionTLS13}
		cfg.ServerTLS = &tls.Config{Certificates: []tls.Certificate{tc}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	})
	c.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if got := len(c.propose(ctx, "tls", 4, 100, nil)); got != 100 {
		t.Fatalf("confirmed %d of 100", got)
	}
	c.waitApplied(100, 30*time.Second)
	c.checkIdentical()
	_ = fmt.Sprint()
}

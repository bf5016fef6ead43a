package consortium_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hyperledger/fabric-protos-go-apiv2/common"
	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/identity"
	"github.com/memberd/memberd/internal/demo"
	"github.com/memberd/memberd/internal/testenv"
	"github.com/memberd/memberd/node/block"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/tunnel"
)

// TestIdentityRotationThenRevocation: member A gets a new HSM key and
// certificate dropped into its identity folder while running (no restart);
// then a signed policy revokes A's old certificate. The relays close A's
// connections made with the old certificate at once, and A reconnects to
// both relays with the new one.
func TestIdentityRotationThenRevocation(t *testing.T) {
	module, _ := testenv.SoftHSMModule(t)
	L := initConsortium(t, 2, 2)
	d := start(t, L, nil)
	a, b := L.Members[0], L.Members[1]
	mdir := filepath.Join(L.Dir, "members", a)
	oldSerial := d.IdentitySerial(a)

	// rotate makes a new key in A's token, a CSR with the Fabric role ous
	// (as 'memberd hsm csr --ou ... --ip ... --dns localhost'), has the
	// member CA sign it and drops both into A's identity folder.
	rotate := func(object string, ous ...string) *x509.Certificate {
		t.Helper()
		time.Sleep(1100 * time.Millisecond) // a later NotBefore (second resolution) makes the new one win
		uri := fmt.Sprintf("pkcs11:token=%s;object=%s?module-path=%s&pin-source=file:%s", a, object, module, filepath.Join(mdir, "pin"))
		ki, err := hsm.GenerateKey(uri, nil)
		if err != nil {
			t.Fatal(err)
		}
		key, err := hsm.OpenKey(ki.URI, nil)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := hsm.CreateCSR(key, hsm.CSRRequest{Subject: pkix.Name{CommonName: a + "-" + object, OrganizationalUnit: ous},
			DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1), net.ParseIP(L.Genesis.Member(a).OverlayIP)}})
		key.Close()
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := L.SignCSR(a, csr)
		if err != nil {
			t.Fatal(err)
		}
		idf := filepath.Join(mdir, "identity", identity.File)
		var keys struct {
			Keys []string `yaml:"keys"`
		}
		b0, _ := os.ReadFile(idf)
		if err := yaml.Unmarshal(b0, &keys); err != nil {
			t.Fatal(err)
		}
		keys.Keys = append(keys.Keys, ki.URI)
		b1, _ := yaml.Marshal(keys)
		if err := os.WriteFile(filepath.Join(mdir, "identity", object+".pem"), hsm.EncodePEM("CERTIFICATE", leaf.Raw), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(idf, b1, 0o644); err != nil {
			t.Fatal(err)
		}
		return leaf
	}

	// A certificate without OU=orderer: the identity folder switches (the
	// tunnel and relays take it), but the ledger refuses to sign blocks with
	// it, which stock peers would refuse for good, and keeps the old one.
	bad := rotate("identity-no-ou")
	waitFor(t, 10*time.Second, "A to switch to the certificate without OU", func() bool { return d.IdentitySerial(a) == bad.SerialNumber.String() })
	if got := ledgerSerial(t, d, a); got != oldSerial {
		t.Fatalf("A's ledger switched to certificate %s without OU=orderer (want it to keep %s)", got, oldSerial)
	}

	// A good one: OU=orderer and the SANs of the demo.
	leaf := rotate("identity-2", "orderer")
	waitFor(t, 10*time.Second, "A to switch to the new certificate", func() bool {
		return d.IdentitySerial(a) == leaf.SerialNumber.String() && ledgerSerial(t, d, a) == leaf.SerialNumber.String()
	})
	t.Logf("%s switched identity: serial %s → %s", a, oldSerial, leaf.SerialNumber)
	newSerial := leaf.SerialNumber.String()
	devA, devB := d.Device(a), d.Device(b)
	// A's tunnel re-signs its WireGuard key attestation with the new
	// identity, and B takes it (same WireGuard key, new certificate).
	waitFor(t, 10*time.Second, "B to hold A's attestation signed with the new certificate", func() bool {
		p := peerStatus(devB, a)
		return p != nil && p.Certificate != nil && p.Certificate.SerialNumber.String() == newSerial
	})
	tctx, tcancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer tcancel()
	aSide, bSide := pair(t, tctx, devA, devB, b, 7057)
	if err := transfer(tctx, aSide, bSide, 256<<10, 1, nil); err != nil {
		t.Fatal(err)
	}

	// Revoke the old certificate: members (through the tunnel) and relays.
	v2 := nextPolicy(t, L, L.Genesis, func(doc *policy.Document) {
		doc.Revocations.Certificates = append(doc.Revocations.Certificates,
			&policy.RevokedCert{Member: a, Serial: oldSerial, Reason: "rotated"})
	}, a, b)
	if _, err := d.PushPolicy(tctx, b, v2.Marshal()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "both members to apply the revocation", func() bool {
		return d.PolicyVersion(a) == v2.Version() && d.PolicyVersion(b) == v2.Version()
	})
	if p := peerStatus(devB, a); p == nil {
		t.Fatal("B removed A's WireGuard peer at the revocation of A's old certificate although A re-attested with the new one")
	}
	if err := d.DropRelayPolicy(v2.Marshal()); err != nil {
		t.Fatal(err)
	}
	// Each relay closes A's old-certificate connection; A redials with the
	// new certificate and is admitted.
	waitFor(t, 10*time.Second, "the relays to close A's old-certificate connections", func() bool {
		for _, s := range d.RelayStatus(a) {
			if s.LastClose == "" {
				return false
			}
		}
		return true
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := d.WaitConnected(ctx); err != nil {
		t.Fatalf("A did not reconnect with its new certificate: %v (%+v)", err, d.RelayStatus(a))
	}
	for _, s := range d.RelayStatus(a) {
		t.Logf("%s: %s %s (closed before: %s)", s.ID, s.State, s.Path, s.LastClose)
	}
	// The TCP connection inside the tunnel survived the relay reconnection.
	if err := transfer(tctx, bSide, aSide, 256<<10, 2, nil); err != nil {
		t.Fatalf("connection after the revocation: %v", err)
	}
	// The ledger followed the rotation without a restart: A signs the
	// blocks it writes from now on, and its gRPC endpoint presents, the new
	// certificate; ordering goes on after the old one is revoked.
	checkLedgerIdentity(t, tctx, d, a, newSerial)

	// A WireGuard key rotation signed with the new identity is accepted by
	// B (the old certificate is revoked now) and the connection keeps going.
	refused := devB.Stats().AttestationsRefused
	oldKey := devA.PublicKey()
	if err := devA.Rotate(tctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "B to move A's peer to its new WireGuard key", func() bool {
		p := peerStatus(devB, a)
		return p != nil && p.PublicKey == devA.PublicKey() && p.PublicKey != oldKey
	})
	if n := devB.Stats().AttestationsRefused - refused; n != 0 {
		t.Fatalf("B refused %d of A's attestations during the rotation", n)
	}
	if err := transfer(tctx, aSide, bSide, 256<<10, 3, nil); err != nil {
		t.Fatalf("connection after the WireGuard key rotation: %v", err)
	}
	// /status of B shows A's last handshake, recent, and its new certificate.
	st := adminStatus(t, d.AdminAddr(b))
	var found bool
	for _, p := range st.Tunnel.Peers {
		if p.Member != a {
			continue
		}
		found = true
		if p.CertificateSerial != newSerial {
			t.Errorf("/status: A's certificate serial %q, want %q", p.CertificateSerial, newSerial)
		}
		hs, err := time.Parse(time.RFC3339Nano, p.LastHandshake)
		if err != nil || time.Since(hs) > time.Minute {
			t.Errorf("/status: A's last handshake %q (%v), want within the last minute", p.LastHandshake, err)
		}
	}
	if !found {
		t.Fatalf("/status of B lists no peer %s: %+v", a, st.Tunnel.Peers)
	}
	// memberd run registers the tunnel collectors: A counts two identity
	// changes (the tunnel took the certificate without OU too, which only
	// the ledger refuses) and one rotation, and packets both ways.
	m := adminMetrics(t, d.AdminAddr(a))
	for _, want := range []string{"memberd_tunnel_identity_changes_total 2", "memberd_tunnel_rotations_total 1",
		`memberd_tunnel_attestations_refused_total{reason="identity"}`, "memberd_tunnel_peers 1"} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics of A lacks %q", want)
		}
	}
	// B moved A's peer to A's new WireGuard key when the first packet of the
	// new session arrived, and counts it.
	if mb := adminMetrics(t, d.AdminAddr(b)); !strings.Contains(mb, "memberd_tunnel_peer_key_switches_total 1\n") {
		t.Errorf("/metrics of B: want memberd_tunnel_peer_key_switches_total 1 (A rotated once)")
	}
	for _, dir := range []string{"in", "out"} {
		if strings.Contains(m, `memberd_tunnel_packets_total{direction="`+dir+`"} 0`+"\n") ||
			!strings.Contains(m, `memberd_tunnel_packets_total{direction="`+dir+`"}`) {
			t.Errorf("/metrics of A: no packets %s", dir)
		}
	}
}

// checkLedgerIdentity submits envelopes to member's ledger and checks that
// the newest block as member stores it is signed by, and member's gRPC
// endpoint presents, the certificate with serial.
func checkLedgerIdentity(t *testing.T, ctx context.Context, d *demo.Consortium, member, serial string) {
	t.Helper()
	if err := d.WaitLedger(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LedgerSubmit(ctx, member, 3); err != nil {
		t.Fatalf("ledger submit to %s: %v", member, err)
	}
	var blk *common.Block
	var tlsCert *x509.Certificate
	var lastErr error
	waitFor(t, 10*time.Second, member+"'s newest block", func() bool {
		h, err := d.LedgerHeight(member)
		if err != nil || h < 2 {
			lastErr = fmt.Errorf("height %d: %v", h, err)
			return false
		}
		blk, tlsCert, lastErr = d.LedgerBlock(ctx, member, h-1)
		if lastErr != nil {
			t.Log(lastErr)
		}
		return lastErr == nil
	})
	if got := tlsCert.SerialNumber.String(); got != serial {
		t.Errorf("%s's ledger gRPC presents certificate serial %s, want %s", member, got, serial)
	}
	sds, err := block.Signatures(blk)
	if err != nil {
		t.Fatal(err)
	}
	if err := block.VerifySignatures(blk, block.VerifyCreatorSignature); err != nil {
		t.Fatal(err)
	}
	_, cert, err := block.CreatorCertificate(sds[0].Identity)
	if err != nil {
		t.Fatal(err)
	}
	if got := cert.SerialNumber.String(); got != serial {
		t.Errorf("%s's block %d is signed by certificate serial %s, want %s", member, blk.Header.Number, got, serial)
	}
}

func adminMetrics(t *testing.T, addr string) string {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func peerStatus(d *tunnel.Device, member string) *tunnel.PeerStatus {
	for _, p := range d.Peers() {
		if p.Member == member && !p.PublicKey.IsZero() {
			return &p
		}
	}
	return nil
}

type statusDoc struct {
	Tunnel struct {
		Peers []struct {
			Member            string `json:"member"`
			LastHandshake     string `json:"last_handshake"`
			CertificateSerial string `json:"certificate_serial"`
		} `json:"peers"`
	} `json:"tunnel"`
}

func adminStatus(t *testing.T, addr string) statusDoc {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st statusDoc
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return st
}

// ledgerSerial is the serial of the certificate member's ledger signs with
// (/status ledger.certificate_serial).
func ledgerSerial(t *testing.T, d *demo.Consortium, member string) string {
	t.Helper()
	return statusOf(t, d, member).CertificateSerial
}

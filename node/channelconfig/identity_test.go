package channelconfig

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testpki"
)

// issue makes a leaf of ca valid until notAfter with subject OUs ous.
func issue(t *testing.T, ca *testpki.CA, cn string, notAfter time.Time, ous ...string) *x509.Certificate {
	t.Helper()
	return ca.Issue(t, cn, testpki.Valid(time.Now().Add(-time.Hour), notAfter), testpki.OU(ous...)).Cert
}

// TestCheckBlockSigner: a node's signing certificate is checked as a stock
// peer checks block signatures: the signer must be a valid identity of an
// orderer org (chained to its CA, exactly one NodeOU role) so that
// /Channel/Orderer/BlockValidation (ANY Writers) is satisfied.
func TestCheckBlockSigner(t *testing.T) {
	ca1, ca2, appCA := testpki.NewCA(t, "m1 CA"), testpki.NewCA(t, "m2 CA"), testpki.NewCA(t, "app CA")
	o1 := Org{MSPID: "m1MSP", RootCerts: [][]byte{[]byte(ca1.PEM)}, OrdererEndpoints: []string{"127.0.0.1:7050"}}
	o2 := Org{MSPID: "m2MSP", RootCerts: [][]byte{[]byte(ca2.PEM)}, OrdererEndpoints: []string{"127.0.0.1:7051"}}
	app := Org{MSPID: "appMSP", RootCerts: [][]byte{[]byte(appCA.PEM)}}
	tls := issue(t, ca1, "tls", time.Now().Add(time.Hour), "orderer")
	tp := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: tls.Raw})
	b, err := GenesisBlock(Config{ChannelID: "ch", OrdererOrgs: []Org{o1, o2}, ApplicationOrgs: []Org{o1, o2, app},
		Consenters: []Consenter{{Host: "100.64.0.1", Port: 7053, ClientTLSCert: tp, ServerTLSCert: tp}}}, time.Now(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ch, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	for _, tc := range []struct {
		name string
		msp  string
		cert *x509.Certificate
		role string
		want string // "" = accepted
	}{
		{"orderer OU", "m1MSP", issue(t, ca1, "n1", later, "orderer"), OrdererOU, ""},
		{"other orderer org", "m2MSP", issue(t, ca2, "n2", later, "orderer"), OrdererOU, ""},
		{"peer OU is a member too", "m1MSP", issue(t, ca1, "p1", later, "peer"), PeerOU, ""},
		{"no OU", "m1MSP", issue(t, ca1, "n1", later), "", "has no OU that resolves to client, peer, admin or orderer"},
		{"unknown OU", "m1MSP", issue(t, ca1, "n1", later, "ordering"), "", `OUs ["ordering"]`},
		{"two roles", "m1MSP", issue(t, ca1, "n1", later, "orderer", "admin"), "", "several roles"},
		{"wrong CA", "m1MSP", issue(t, ca2, "n1", later, "orderer"), "", "does not chain to a CA of MSP m1MSP"},
		{"unknown MSP", "m9MSP", issue(t, ca1, "n1", later, "orderer"), "", `no organisation with MSP id "m9MSP"`},
		{"application org only", "appMSP", issue(t, appCA, "a1", later, "orderer"), OrdererOU, "not in the Orderer group"},
		{"expired", "m1MSP", issue(t, ca1, "n1", time.Now().Add(-time.Minute), "orderer"), OrdererOU, "expired"},
		{"a CA", "m1MSP", ca1.Cert, "", "is a CA certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ch.CheckBlockSigner(tc.msp, tc.cert, time.Now())
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
			} else if !errors.Is(err, ErrIdentity) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrIdentity saying %q", err, tc.want)
			}
			if tc.role != "" {
				if role, err := ch.Role(tc.msp, tc.cert); err != nil || role != tc.role {
					t.Fatalf("Role = %q, %v; want %q", role, err, tc.role)
				}
			}
		})
	}
}

// TestCheckBlockSignerFabricVectors: against configtxgen's channel config,
// the signing certificate of the stock orderer that signed the vectors
// blocks passes, and Org1's client certificate (not an orderer org) does not.
func TestCheckBlockSignerFabricVectors(t *testing.T) {
	ch, err := Parse(readBlock(t, "vectors-0.block"))
	if err != nil {
		t.Fatal(err)
	}
	read := func(name string) *x509.Certificate {
		raw, err := os.ReadFile("../testdata/fabric-2.5.16/" + name)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(raw)
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	at := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC) // the vectors' certificates are valid 2026-11-22..2036-11-19
	if err := ch.CheckBlockSigner("OrdererMSP", read("orderer-signcert.pem"), at); err != nil {
		t.Fatalf("the stock orderer's signer: %v", err)
	}
	client := read("org1-client-cert.pem")
	if role, err := ch.Role("Org1MSP", client); err != nil || role != ClientOU {
		t.Fatalf("Org1 client role %q, %v", role, err)
	}
	if err := ch.CheckBlockSigner("Org1MSP", client, at); err == nil || !strings.Contains(err.Error(), "BlockValidation") {
		t.Fatalf("Org1 client as block signer: %v", err)
	}
}

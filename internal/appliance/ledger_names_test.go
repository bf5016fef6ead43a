package appliance

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/testpki"
	"github.com/memberd/memberd/node/channelconfig"
)

// TestCheckServedNames: the ledger's TLS certificate must carry a SAN for
// ledger.listen (unless it is a wildcard address) and for each of the
// member's orderer endpoints in the channel config, which Fabric peers
// dial and check; the error names the missing address and the flag to add.
func TestCheckServedNames(t *testing.T) {
	ca := testpki.NewCA(t, "m1 CA")
	key, err := hsm.GenerateSoftKey(t.TempDir()+"/k.pem", &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	csr, err := hsm.CreateCSR(key, hsm.CSRRequest{Subject: pkix.Name{CommonName: "n1", OrganizationalUnit: []string{"orderer"}},
		DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := hsm.SignCSR(ca.Cert, ca.Key, csr, hsm.LeafConfig{Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	cnOnly := ca.Issue(t, "127.0.0.1", testpki.OU("orderer")).Cert
	chFor := func(endpoints ...string) *channelconfig.Channel {
		t.Helper()
		tlsPEM := hsm.EncodePEM("CERTIFICATE", cert.Raw)
		org := channelconfig.Org{MSPID: "m1MSP", RootCerts: [][]byte{[]byte(ca.PEM)}, OrdererEndpoints: endpoints}
		b, err := channelconfig.GenesisBlock(channelconfig.Config{ChannelID: "c", OrdererOrgs: []channelconfig.Org{org}, ApplicationOrgs: []channelconfig.Org{org},
			Consenters: []channelconfig.Consenter{{Host: "100.64.0.1", Port: 7053, ClientTLSCert: tlsPEM, ServerTLSCert: tlsPEM}}}, time.Now(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		ch, err := channelconfig.Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		return ch
	}
	for _, tc := range []struct {
		name      string
		cert      *x509.Certificate
		listen    string
		endpoints []string
		want      string // "" = accepted
		admin     string // ledger.admin.listen; "" = 127.0.0.1:9443
	}{
		{"loopback", cert, "127.0.0.1:7050", []string{"127.0.0.1:7050", "localhost:7050"}, "", ""},
		{"wildcard listen", cert, ":7050", []string{"127.0.0.1:7050"}, "", ""},
		{"unspecified listen", cert, "0.0.0.0:7050", []string{"localhost:7050"}, "", ""},
		{"listen address not named", cert, "10.0.0.5:7050", []string{"127.0.0.1:7050"}, "no SAN for 10.0.0.5, the key ledger.listen 10.0.0.5:7050", ""},
		{"endpoint not named", cert, ":7050", []string{"ledger.m1.example:7050"}, "--dns ledger.m1.example", ""},
		{"common name only", cnOnly, "127.0.0.1:7050", nil, "--ip 127.0.0.1", ""},
		{"osnadmin address not named", cert, "127.0.0.1:7050", nil, "no SAN for 10.0.0.9, the key ledger.admin.listen 10.0.0.9:9443", "10.0.0.9:9443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admin := tc.admin
			if admin == "" {
				admin = "127.0.0.1:9443"
			}
			err := checkServedNames(tc.cert, []servedAddr{{"ledger.listen", tc.listen}, {"ledger.admin.listen", admin}}, chFor(tc.endpoints...), "m1MSP")
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, errServedName) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want errServedName saying %q", err, tc.want)
			}
		})
	}
}

package demo

// Fabric identities of the demo: demo init issues, from each member's CA,
// the appliance (ledger node) certificate with OU=orderer and a SAN for
// every address it is dialled on, and an admin (OU=admin) and a client
// (OU=client) identity, each as a Fabric MSP folder that stock tools use as
// CORE_PEER_MSPCONFIGPATH:
//
//	members/<id>/admin/msp/    signcerts/cert.pem keystore/key.pem cacerts/ca.pem
//	members/<id>/client/msp/   tlscacerts/ca.pem config.yaml (NodeOUs)
//
// The OU names are the channel config's NodeOU identifiers
// (node/channelconfig: client, peer, admin, orderer).

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/node/channelconfig"
)

// mspConfigYAML is the config.yaml of a member MSP folder: NodeOUs on,
// with the identifiers memberd's channel configs use, anchored at the CA.
func mspConfigYAML(caFile string) []byte {
	s := "NodeOUs:\n  Enable: true\n"
	for _, r := range []struct{ key, ou string }{{"ClientOUIdentifier", channelconfig.ClientOU},
		{"PeerOUIdentifier", channelconfig.PeerOU}, {"AdminOUIdentifier", channelconfig.AdminOU},
		{"OrdererOUIdentifier", channelconfig.OrdererOU}} {
		s += fmt.Sprintf("  %s:\n    Certificate: %s\n    OrganizationalUnitIdentifier: %s\n", r.key, caFile, r.ou)
	}
	return []byte(s)
}

// demoSANs are the SANs of a demo appliance certificate: the loopback
// addresses the ledger listens on (ledger.listen, and so the client-facing
// ledger_endpoints) and the overlay address of its consenter endpoint.
func demoSANs(overlay string) ([]string, []net.IP) {
	return []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1), net.ParseIP(overlay)}
}

// demoCSR is the CSR of a member's appliance identity: the ledger node that
// signs blocks, so OU=orderer, with the SANs of demoSANs.
func demoCSR(id, overlay string) hsm.CSRRequest {
	dns, ips := demoSANs(overlay)
	return hsm.CSRRequest{Subject: pkix.Name{CommonName: id + "-appliance", Organization: []string{id},
		OrganizationalUnit: []string{channelconfig.OrdererOU}}, DNSNames: dns, IPs: ips}
}

// writeDemoMSP issues an identity with role ou from the member CA and
// writes it as a Fabric MSP folder dir/msp (key in a file: demo only).
func writeDemoMSP(dir, id, ou string, ca *x509.Certificate, caKey hsm.Signer, now time.Time) error {
	msp := filepath.Join(dir, "msp")
	if err := mkdirs(msp, "signcerts", "keystore", "cacerts", "tlscacerts"); err != nil {
		return err
	}
	key, err := hsm.GenerateSoftKey(filepath.Join(msp, "keystore", "key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: discardW{}})
	if err != nil {
		return err
	}
	defer key.Close()
	csr, err := hsm.CreateCSR(key, hsm.CSRRequest{Subject: pkix.Name{CommonName: id + "-" + ou,
		Organization: []string{id}, OrganizationalUnit: []string{ou}}})
	if err != nil {
		return err
	}
	leaf, err := hsm.SignCSR(ca, caKey, csr, hsm.LeafConfig{Now: now})
	if err != nil {
		return fmt.Errorf("demo %s identity of %s: %w", ou, id, err)
	}
	caPEM := hsm.EncodePEM("CERTIFICATE", ca.Raw)
	for p, b := range map[string][]byte{
		filepath.Join(msp, "signcerts", "cert.pem"): hsm.EncodePEM("CERTIFICATE", leaf.Raw),
		filepath.Join(msp, "cacerts", "ca.pem"):     caPEM,
		filepath.Join(msp, "tlscacerts", "ca.pem"):  caPEM,
		filepath.Join(msp, "config.yaml"):           mspConfigYAML("cacerts/ca.pem"),
	} {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// SignCSR has member's demo CA (members/<id>/ca.pem and its key file,
// INSECURE: demo only) issue a certificate for a DER CSR, as
// 'memberd ca sign' does.
func (L *Layout) SignCSR(member string, csr []byte) (*x509.Certificate, error) {
	mdir := filepath.Join(L.Dir, "members", member)
	caPEM, err := os.ReadFile(filepath.Join(mdir, "ca.pem"))
	if err != nil {
		return nil, err
	}
	cas, err := hsm.ParseCertificatesPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(mdir, "ca.pem"), err)
	}
	caKey, err := hsm.OpenSoftSigner(filepath.Join(mdir, "ca-key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: discardW{}})
	if err != nil {
		return nil, err
	}
	defer caKey.Close()
	return hsm.SignCSR(cas[0], caKey, csr, hsm.LeafConfig{Now: time.Now()})
}

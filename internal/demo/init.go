package demo

// memberd demo init: everything a consortium on loopback needs, written to
// a folder. Layout of DIR:
//
//	genesis.yaml, genesis.hash        signed policy version 1 and its pin
//	softhsm2.conf, tokens/            SoftHSM2 tokens (--hsm softhsm)
//	members/<id>/memberd.yaml         appliance config (memberd run --config ...)
//	members/<id>/identity/            identity.yaml + certificate (+ key.pem with --hsm soft):
//	                                  OU=orderer, SANs 127.0.0.1, localhost and the overlay IP
//	members/<id>/admin/msp/, client/msp/  Fabric MSP folders, OU=admin and OU=client (demo_msp.go)
//	members/<id>/ca.pem, ca-key.pem   the member CA (its key is a file: demo only)
//	members/<id>/admin-key.pem        the member's policy admin key (file: demo only)
//	members/<id>/pin                  the token PIN (mode 0600, --hsm softhsm)
//	members/<id>/policy/, state/      policy folder (holds genesis.yaml) and state folder
//	members/<id>/genesis.block        the ledger channel's genesis block (same for all)
//	members/<id>/ledger/              raft log and block store (memberd run)
//	relays/<id>/relay.yaml            relay config (memberd relay --config ...)
//	relays/<id>/relay.crt, key.pem    relay certificate and its (file, demo only) key
//	relays/<id>/policy/, state/
//
// Every key in a file is named insecure in the configs and refused outside
// the demo (hsm.insecure_soft_keys / insecure_dev_key).

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/identity"
	"github.com/memberd/memberd/internal/appliance"
	"github.com/memberd/memberd/internal/loopport"
	"github.com/memberd/memberd/internal/usage"
	"github.com/memberd/memberd/node/channelconfig"
	"github.com/memberd/memberd/policy"
)

// Options say what 'memberd demo init' writes.
type Options struct {
	Dir     string   // required; created, must be empty or missing
	Members int      // 1..50; 0 = 3
	Relays  int      // 1..10; 0 = 2
	HSM     string   // "softhsm" (default) or "soft" (insecure key files)
	Relay   []string // relay host:port, one per relay; default 127.0.0.1:<free port>
	// Ports (in addition to 7050-7059 and the push port) every member may
	// reach on every other member.
	ExtraPorts []uint16
}

// Validate checks the options.
func (o *Options) Validate() error {
	switch {
	case o.Dir == "":
		return errors.New("--dir: required")
	case o.Members < 0 || o.Members > 50:
		return fmt.Errorf("--members: %d must be 1..50", o.Members)
	case o.Relays < 0 || o.Relays > 10:
		return fmt.Errorf("--relays: %d must be 1..10", o.Relays)
	case o.HSM != "" && o.HSM != "softhsm" && o.HSM != "soft":
		return fmt.Errorf("--hsm: %q must be softhsm or soft", o.HSM)
	case len(o.Relay) > 0 && len(o.Relay) != o.relays():
		return fmt.Errorf("--relay-addr: %d given for %d relays (give one per relay)", len(o.Relay), o.relays())
	}
	for _, a := range o.Relay {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("--relay-addr: %q is not host:port", a)
		}
	}
	return nil
}

func (o *Options) members() int {
	if o.Members == 0 {
		return 3
	}
	return o.Members
}

func (o *Options) relays() int {
	if o.Relays == 0 {
		return 2
	}
	return o.Relays
}

// Layout is what demo init wrote.
type Layout struct {
	Dir          string
	Members      []string          // member ids, in order
	Relays       []string          // relay ids
	MemberConfig map[string]string // member id -> memberd.yaml
	RelayConfig  map[string]string // relay id -> relay.yaml
	AdminKey     map[string]string // member id -> admin key file (insecure)
	Genesis      *policy.Policy    `yaml:"-"`
	SoftHSMConf  string            // "" with --hsm soft
}

// LayoutFile records the layout in DIR for 'memberd demo --dir DIR'.
const LayoutFile = "demo.yaml"

// Init writes a whole demo consortium into o.Dir and starts nothing.
func Init(o Options) (*Layout, error) {
	if err := o.Validate(); err != nil {
		return nil, &usage.Error{Err: err}
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return nil, usage.Errorf("--dir: %s is not empty: choose a new folder", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	mode := o.HSM
	if mode == "" {
		mode = "softhsm"
	}
	L := &Layout{Dir: dir, MemberConfig: map[string]string{}, RelayConfig: map[string]string{}, AdminKey: map[string]string{}}
	now := time.Now()
	var module string
	if mode == "softhsm" {
		if module, err = softHSMModule(); err != nil {
			return nil, err
		}
		L.SoftHSMConf = filepath.Join(dir, "softhsm2.conf")
		if err := os.MkdirAll(filepath.Join(dir, "tokens"), 0o700); err != nil {
			return nil, err
		}
		conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", filepath.Join(dir, "tokens"))
		if err := os.WriteFile(L.SoftHSMConf, []byte(conf), 0o600); err != nil {
			return nil, err
		}
	}
	// SoftHSM2 reads its configuration only from SOFTHSM2_CONF: it is
	// given to softhsm2-util's environment and to the module through
	// hsm.Options, never set in this process's environment.
	hsmOpts := &hsm.Options{ModuleEnv: []string{"SOFTHSM2_CONF=" + L.SoftHSMConf}}

	doc := &policy.Document{Format: policy.FormatV1, Consortium: "demo", Version: 1,
		Description: "memberd demo consortium (insecure keys: never use in production)", OverlayPrefix: "100.64.0.0/16",
		Ledger: policy.Ledger{Channel: "demo", BatchTimeout: "2s",
			BatchSize: policy.BatchSize{MaxMessageCount: 500, AbsoluteMaxBytes: 10 << 20, PreferredMaxBytes: 2 << 20}}}
	ports := []policy.PortRange{{Lo: 7050, Hi: 7059}, {Lo: appliance.DefaultPushPort, Hi: appliance.DefaultPushPort}}
	for _, p := range o.ExtraPorts {
		ports = append(ports, policy.PortRange{Lo: p, Hi: p})
	}
	doc.ACL = []*policy.ACLRule{{From: []string{"*"}, To: []string{"*"}, Ports: ports}, demoLedgerACL()}

	// Free ports are probed one at a time and released at once: the kernel
	// may hand the same one out twice, so never use a port twice here.
	used := map[string]bool{}
	free := func() (string, error) {
		for range 100 {
			a, err := freeSamePort()
			if err != nil || !used[a] {
				used[a] = true
				return a, err
			}
		}
		return "", errors.New("demo init: no distinct free loopback port found")
	}

	// Relays.
	type relayFiles struct{ id, addr, dir string }
	var rfs []relayFiles
	for i := 1; i <= o.relays(); i++ {
		id := fmt.Sprintf("relay-%d", i)
		rdir := filepath.Join(dir, "relays", id)
		if err := mkdirs(rdir, "policy", "state"); err != nil {
			return nil, err
		}
		addr := ""
		if len(o.Relay) > 0 {
			addr = o.Relay[i-1]
		} else if addr, err = free(); err != nil {
			return nil, err
		}
		key, err := hsm.GenerateSoftKey(filepath.Join(rdir, "key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: discardW{}})
		if err != nil {
			return nil, err
		}
		cert, err := selfSignedRelay(key, id, now)
		key.Close()
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(rdir, "relay.crt"), hsm.EncodePEM("CERTIFICATE", cert.Raw), 0o644); err != nil {
			return nil, err
		}
		sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
		doc.Relays = append(doc.Relays, &policy.Relay{ID: id, Address: addr, SPKISHA256: hex.EncodeToString(sum[:])})
		rfs = append(rfs, relayFiles{id, addr, rdir})
		L.Relays = append(L.Relays, id)
	}

	// Members.
	admins := map[string]crypto.Signer{}
	leafs := map[string]*x509.Certificate{} // consenter TLS certificates of the ledger
	ledgerAddrs := map[string]string{}      // member id -> ledger.listen
	ip := netip.MustParseAddr("100.64.0.1")
	for i := 1; i <= o.members(); i++ {
		id := fmt.Sprintf("member-%c", 'a'+rune(i-1)%26)
		if i > 26 {
			id = fmt.Sprintf("member-%d", i)
		}
		mdir := filepath.Join(dir, "members", id)
		if err := mkdirs(mdir, "identity", "policy", "state"); err != nil {
			return nil, err
		}
		soft := &hsm.SoftOptions{AllowInsecure: true, Warnings: discardW{}}
		caKey, err := hsm.GenerateSoftKey(filepath.Join(mdir, "ca-key.pem"), soft)
		if err != nil {
			return nil, err
		}
		ca, err := hsm.NewCACertificate(caKey, hsm.CAConfig{Subject: pkix.Name{CommonName: id + " demo CA", Organization: []string{id}}, Now: now})
		if err != nil {
			caKey.Close()
			return nil, err
		}
		caPEM := hsm.EncodePEM("CERTIFICATE", ca.Raw)
		if err := os.WriteFile(filepath.Join(mdir, "ca.pem"), caPEM, 0o644); err != nil {
			caKey.Close()
			return nil, err
		}
		adminPath := filepath.Join(mdir, "admin-key.pem")
		adminKey, err := hsm.GenerateSoftKey(adminPath, soft)
		if err != nil {
			caKey.Close()
			return nil, err
		}
		admins[id] = adminKey
		defer adminKey.Close()
		L.AdminKey[id] = adminPath

		// The identity key: in a SoftHSM2 token, or a file.
		var keyRef string
		var idKey hsm.Signer
		if mode == "softhsm" {
			pin := filepath.Join(mdir, "pin")
			if err := os.WriteFile(pin, []byte("1234\n"), 0o600); err != nil {
				return nil, err
			}
			initToken := exec.Command("softhsm2-util", "--init-token", "--free", "--label", id, "--pin", "1234", "--so-pin", "5678")
			initToken.Env = append(os.Environ(), hsmOpts.ModuleEnv...)
			out, err := initToken.CombinedOutput()
			if err != nil {
				caKey.Close()
				return nil, fmt.Errorf("softhsm2-util --init-token %s: %v: %s (install softhsm2, or use --hsm soft)", id, err, out)
			}
			ki, err := hsm.GenerateKey(fmt.Sprintf("pkcs11:token=%s;object=identity?module-path=%s&pin-source=file:%s", id, module, pin), hsmOpts)
			if err != nil {
				caKey.Close()
				return nil, err
			}
			keyRef = ki.URI
			idKey, err = hsm.OpenKey(keyRef, hsmOpts)
			if err != nil {
				caKey.Close()
				return nil, err
			}
		} else {
			kp := filepath.Join(mdir, "identity", "key.pem")
			if idKey, err = hsm.GenerateSoftKey(kp, soft); err != nil {
				caKey.Close()
				return nil, err
			}
			keyRef = "file:" + kp
		}
		csr, err := hsm.CreateCSR(idKey, demoCSR(id, ip.String()))
		idKey.Close()
		if err != nil {
			caKey.Close()
			return nil, err
		}
		leaf, err := hsm.SignCSR(ca, caKey, csr, hsm.LeafConfig{Now: now})
		if err == nil {
			err = writeDemoMSP(filepath.Join(mdir, "admin"), id, channelconfig.AdminOU, ca, caKey, now)
		}
		if err == nil {
			err = writeDemoMSP(filepath.Join(mdir, "client"), id, channelconfig.ClientOU, ca, caKey, now)
		}
		caKey.Close()
		if err != nil {
			return nil, err
		}
		// The ledger's LAN address, in the policy as the member's
		// client-facing ledger endpoint (the genesis block, which every
		// member shares, names it).
		if ledgerAddrs[id], err = free(); err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(mdir, "identity", "cert.pem"), hsm.EncodePEM("CERTIFICATE", leaf.Raw), 0o644); err != nil {
			return nil, err
		}
		leafs[id] = leaf
		idy, _ := yaml.Marshal(map[string]any{"keys": []string{keyRef}})
		if err := os.WriteFile(filepath.Join(mdir, "identity", identity.File), idy, 0o644); err != nil {
			return nil, err
		}
		pubDER, err := x509.MarshalPKIXPublicKey(adminKey.Public())
		if err != nil {
			return nil, err
		}
		doc.Members = append(doc.Members, &policy.Member{ID: id, Name: "Demo member " + id, MSPID: id + "MSP",
			OverlayIP: ip.String(), Roles: []policy.Role{policy.RoleConsenter, policy.RoleWriter}, CACerts: string(caPEM),
			LedgerEndpoints: []string{ledgerAddrs[id]},
			Admins:          []*policy.Admin{{KeyID: "a1", PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))}}})
		doc.Ledger.Consenters = append(doc.Ledger.Consenters, id)
		ip = ip.Next()
		L.Members = append(L.Members, id)
	}

	// Genesis, signed by every member's admin.
	docBytes, err := policy.MarshalDocument(doc)
	if err != nil {
		return nil, fmt.Errorf("demo genesis policy: %w", err)
	}
	gen, err := policy.Parse(docBytes)
	if err != nil {
		return nil, fmt.Errorf("demo genesis policy: %w", err)
	}
	for _, id := range L.Members {
		if gen, err = gen.Sign(admins[id], policy.AdminRef{Member: id, KeyID: "a1"}); err != nil {
			return nil, err
		}
	}
	L.Genesis = gen
	bundle := gen.Marshal()
	hash := gen.Hash().String()
	if err := os.WriteFile(filepath.Join(dir, "genesis.yaml"), bundle, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "genesis.hash"), []byte(hash+"\n"), 0o644); err != nil {
		return nil, err
	}

	ledgerGenesis, err := LedgerGenesis(gen, leafs, now)
	if err != nil {
		return nil, err
	}

	// Configs.
	for _, r := range rfs {
		if err := os.WriteFile(filepath.Join(r.dir, "policy", "genesis.yaml"), bundle, 0o644); err != nil {
			return nil, err
		}
		cfg := map[string]any{"id": r.id, "listen": r.addr, "certificate": "relay.crt", "key": "key.pem",
			"insecure_dev_key": true, "admin": "127.0.0.1:0", "policy_dir": "policy", "state_dir": "state", "genesis": hash,
			"limits": map[string]any{"rate_bytes_per_sec": -1}}
		p := filepath.Join(r.dir, "relay.yaml")
		if err := writeYAML(p, "# memberd relay for the demo consortium (INSECURE: the key is a file)\n", cfg); err != nil {
			return nil, err
		}
		L.RelayConfig[r.id] = p
	}
	for _, id := range L.Members {
		mdir := filepath.Join(dir, "members", id)
		if err := os.WriteFile(filepath.Join(mdir, "policy", "genesis.yaml"), bundle, 0o644); err != nil {
			return nil, err
		}
		adminAddr, err := free()
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(mdir, LedgerGenesisFile), ledgerGenesis, 0o644); err != nil {
			return nil, err
		}
		ledgerAddr := ledgerAddrs[id]
		participationAddr, err := free() // osnadmin
		if err != nil {
			return nil, err
		}
		cfg := map[string]any{"member": id, "identity": "identity",
			"hsm":    map[string]any{"insecure_soft_keys": mode == "soft"},
			"policy": map[string]any{"dir": "policy", "state_dir": "state", "genesis": hash},
			"relay":  map[string]any{"no_env_proxy": true, "quic_timeout": "1s"},
			"admin":  adminAddr,
			"ledger": demoLedgerConfig(ledgerAddr, participationAddr)}
		head := "# memberd appliance for the demo consortium\n"
		if mode == "softhsm" {
			head += "# its identity key is in SoftHSM2: export SOFTHSM2_CONF=" + L.SoftHSMConf + "\n"
		} else {
			head += "# INSECURE: its identity key is a file (hsm.insecure_soft_keys), for the demo only\n"
		}
		p := filepath.Join(mdir, "memberd.yaml")
		if err := writeYAML(p, head, cfg); err != nil {
			return nil, err
		}
		L.MemberConfig[id] = p
	}
	if err := writeYAML(filepath.Join(dir, LayoutFile), "# written by memberd demo init\n", L); err != nil {
		return nil, err
	}
	return L, nil
}

// LoadLayout reads the layout demo init wrote into dir.
func LoadLayout(dir string) (*Layout, error) {
	b, err := os.ReadFile(filepath.Join(dir, LayoutFile))
	if err != nil {
		return nil, usage.Errorf("--dir %s: %v (run 'memberd demo init' first, or give an empty folder)", dir, err)
	}
	var L Layout
	if err := yaml.Unmarshal(b, &L); err != nil {
		return nil, usage.Errorf("%s: %v", filepath.Join(dir, LayoutFile), err)
	}
	g, err := os.ReadFile(filepath.Join(dir, "genesis.yaml"))
	if err != nil {
		return nil, err
	}
	if L.Genesis, err = policy.Parse(g); err != nil {
		return nil, err
	}
	return &L, nil
}

func writeYAML(path, head string, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, append([]byte(head), b...), 0o644)
}

func mkdirs(base string, subs ...string) error {
	for _, s := range subs {
		if err := os.MkdirAll(filepath.Join(base, s), 0o700); err != nil {
			return err
		}
	}
	return nil
}

// freeSamePort returns 127.0.0.1:P with P free for both TCP and UDP now,
// below the ephemeral range: the address is bound later, by another process.
func freeSamePort() (string, error) { return loopport.Free() }

// selfSignedRelay makes the relay's self-signed TLS certificate (members
// pin its key in the policy).
func selfSignedRelay(key crypto.Signer, id string, now time.Time) (*x509.Certificate, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: id},
		DNSNames: []string{id}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(2 * 365 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("relay %s certificate: %w", id, err)
	}
	return x509.ParseCertificate(der)
}

// softHSMModule finds libsofthsm2.so.
func softHSMModule() (string, error) {
	for _, m := range []string{"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
		"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so", "/usr/lib64/pkcs11/libsofthsm2.so", "/usr/local/lib/softhsm/libsofthsm2.so"} {
		if _, err := os.Stat(m); err == nil {
			return m, nil
		}
	}
	return "", usage.Errorf("--hsm softhsm: libsofthsm2.so not found (apt-get install softhsm2), or use --hsm soft (insecure key files)")
}

type discardW struct{}

func (discardW) Write(p []byte) (int, error) { return len(p), nil }

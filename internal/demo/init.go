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
	// Channels, when set, are the policy's ledger.channels (member ids
	// m1, m2, ...) instead of the single channel "demo"; each member's
	// memberd.yaml then names one genesis block per channel
	// (LedgerChannelGenesisFile) in ledger.genesis_blocks.
	Channels []*policy.Channel
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
	in := &initer{o: o, dir: dir, mode: o.HSM, now: time.Now(), used: map[string]bool{},
		L:      &Layout{Dir: dir, MemberConfig: map[string]string{}, RelayConfig: map[string]string{}, AdminKey: map[string]string{}},
		admins: map[string]hsm.Signer{}, leafs: map[string]*x509.Certificate{}, ledgerAddrs: map[string]string{}}
	defer in.closeAdminKeys()
	if in.mode == "" {
		in.mode = "softhsm"
	}
	if in.mode == "softhsm" {
		if err := in.softHSM(); err != nil {
			return nil, err
		}
	}
	// SoftHSM2 reads its configuration only from SOFTHSM2_CONF: it is
	// given to softhsm2-util's environment and to the module through
	// hsm.Options, never set in this process's environment.
	in.hsmOpts = &hsm.Options{ModuleEnv: []string{"SOFTHSM2_CONF=" + in.L.SoftHSMConf}}
	in.doc = demoPolicy(o)
	if len(o.Channels) > 0 {
		in.doc.Ledger.Channel, in.doc.Ledger.Channels = "", o.Channels
	}
	for i := 1; i <= o.relays(); i++ {
		if err := in.relay(i); err != nil {
			return nil, err
		}
	}
	ip := netip.MustParseAddr("100.64.0.1")
	for i := 1; i <= o.members(); i++ {
		if err := in.member(i, ip); err != nil {
			return nil, err
		}
		ip = ip.Next()
	}
	if err := in.genesis(); err != nil {
		return nil, err
	}
	if err := in.configs(); err != nil {
		return nil, err
	}
	if err := writeYAML(filepath.Join(dir, LayoutFile), "# written by memberd demo init\n", in.L); err != nil {
		return nil, err
	}
	return in.L, nil
}

// initer is one run of Init: what the steps share.
type initer struct {
	o       Options
	dir     string
	mode    string // softhsm or soft
	module  string // the SoftHSM2 PKCS#11 module (softhsm)
	hsmOpts *hsm.Options
	now     time.Time
	L       *Layout
	doc     *policy.Document
	used    map[string]bool // loopback addresses handed out

	rfs         []relayFiles
	admins      map[string]hsm.Signer        // member id -> admin key, open until the genesis is signed
	leafs       map[string]*x509.Certificate // consenter TLS certificates of the ledger
	ledgerAddrs map[string]string            // member id -> ledger.listen
	gen         *policy.Policy
	ledgerBlock []byte            // the channel's genesis block (single channel)
	chanBlocks  map[string][]byte // channel -> genesis block (Options.Channels)
}

type relayFiles struct{ id, addr, dir string }

func (in *initer) closeAdminKeys() {
	for _, k := range in.admins {
		k.Close()
	}
}

// softHSM writes the demo's SoftHSM2 configuration and token folder.
func (in *initer) softHSM() error {
	var err error
	if in.module, err = softHSMModule(); err != nil {
		return err
	}
	in.L.SoftHSMConf = filepath.Join(in.dir, "softhsm2.conf")
	if err := os.MkdirAll(filepath.Join(in.dir, "tokens"), 0o700); err != nil {
		return err
	}
	conf := fmt.Sprintf("directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n", filepath.Join(in.dir, "tokens"))
	return os.WriteFile(in.L.SoftHSMConf, []byte(conf), 0o600)
}

// demoPolicy is the demo's policy document without members and relays.
func demoPolicy(o Options) *policy.Document {
	doc := &policy.Document{Format: policy.FormatV1, Consortium: "demo", Version: 1,
		Description: "memberd demo consortium (insecure keys: never use in production)", OverlayPrefix: "100.64.0.0/16",
		Ledger: policy.Ledger{Channel: "demo", BatchTimeout: "2s",
			BatchSize: policy.BatchSize{MaxMessageCount: 500, AbsoluteMaxBytes: 10 << 20, PreferredMaxBytes: 2 << 20}}}
	ports := []policy.PortRange{{Lo: 7050, Hi: 7059}, {Lo: appliance.DefaultPushPort, Hi: appliance.DefaultPushPort}}
	for _, p := range o.ExtraPorts {
		ports = append(ports, policy.PortRange{Lo: p, Hi: p})
	}
	doc.ACL = []*policy.ACLRule{{From: []string{"*"}, To: []string{"*"}, Ports: ports}, demoLedgerACL()}
	return doc
}

// free returns a free loopback address. Free ports are probed one at a
// time and released at once: the kernel may hand the same one out twice,
// so never use a port twice here.
func (in *initer) free() (string, error) {
	for range 100 {
		a, err := freeSamePort()
		if err != nil || !in.used[a] {
			in.used[a] = true
			return a, err
		}
	}
	return "", errors.New("demo init: no distinct free loopback port found")
}

// relay writes relay i's key and certificate and lists it in the policy.
func (in *initer) relay(i int) error {
	id := fmt.Sprintf("relay-%d", i)
	rdir := filepath.Join(in.dir, "relays", id)
	if err := mkdirs(rdir, "policy", "state"); err != nil {
		return err
	}
	addr := ""
	var err error
	if len(in.o.Relay) > 0 {
		addr = in.o.Relay[i-1]
	} else if addr, err = in.free(); err != nil {
		return err
	}
	key, err := hsm.GenerateSoftKey(filepath.Join(rdir, "key.pem"), &hsm.SoftOptions{AllowInsecure: true, Warnings: discardW{}})
	if err != nil {
		return err
	}
	cert, err := selfSignedRelay(key, id, in.now)
	key.Close()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rdir, "relay.crt"), hsm.EncodePEM("CERTIFICATE", cert.Raw), 0o644); err != nil {
		return err
	}
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	in.doc.Relays = append(in.doc.Relays, &policy.Relay{ID: id, Address: addr, SPKISHA256: hex.EncodeToString(sum[:])})
	in.rfs = append(in.rfs, relayFiles{id, addr, rdir})
	in.L.Relays = append(in.L.Relays, id)
	return nil
}

// memberID is the id of the i-th member (1-based).
func memberID(i int) string {
	if i > 26 {
		return fmt.Sprintf("member-%d", i)
	}
	return fmt.Sprintf("member-%c", 'a'+rune(i-1)%26)
}

// member writes member i's CA, admin key, identity (key and certificate),
// MSP folders and identity.yaml, and lists it in the policy with overlay
// address ip.
func (in *initer) member(i int, ip netip.Addr) error {
	id := memberID(i)
	mdir := filepath.Join(in.dir, "members", id)
	if err := mkdirs(mdir, "identity", "policy", "state"); err != nil {
		return err
	}
	soft := &hsm.SoftOptions{AllowInsecure: true, Warnings: discardW{}}
	caKey, err := hsm.GenerateSoftKey(filepath.Join(mdir, "ca-key.pem"), soft)
	if err != nil {
		return err
	}
	defer caKey.Close()
	ca, err := hsm.NewCACertificate(caKey, hsm.CAConfig{Subject: pkix.Name{CommonName: id + " demo CA", Organization: []string{id}}, Now: in.now})
	if err != nil {
		return err
	}
	caPEM := hsm.EncodePEM("CERTIFICATE", ca.Raw)
	if err := os.WriteFile(filepath.Join(mdir, "ca.pem"), caPEM, 0o644); err != nil {
		return err
	}
	adminPath := filepath.Join(mdir, "admin-key.pem")
	adminKey, err := hsm.GenerateSoftKey(adminPath, soft)
	if err != nil {
		return err
	}
	in.admins[id] = adminKey
	in.L.AdminKey[id] = adminPath
	keyRef, leaf, err := in.identity(id, mdir, ip, ca, caKey, soft)
	if err != nil {
		return err
	}
	if err := writeDemoMSP(filepath.Join(mdir, "admin"), id, channelconfig.AdminOU, ca, caKey, in.now); err != nil {
		return err
	}
	if err := writeDemoMSP(filepath.Join(mdir, "client"), id, channelconfig.ClientOU, ca, caKey, in.now); err != nil {
		return err
	}
	// The ledger's LAN address, in the policy as the member's
	// client-facing ledger endpoint (the genesis block, which every
	// member shares, names it).
	if in.ledgerAddrs[id], err = in.free(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(mdir, "identity", "cert.pem"), hsm.EncodePEM("CERTIFICATE", leaf.Raw), 0o644); err != nil {
		return err
	}
	in.leafs[id] = leaf
	idy, _ := yaml.Marshal(map[string]any{"keys": []string{keyRef}})
	if err := os.WriteFile(filepath.Join(mdir, "identity", identity.File), idy, 0o644); err != nil {
		return err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(adminKey.Public())
	if err != nil {
		return err
	}
	in.doc.Members = append(in.doc.Members, &policy.Member{ID: id, Name: "Demo member " + id, MSPID: id + "MSP",
		OverlayIP: ip.String(), Roles: []policy.Role{policy.RoleConsenter, policy.RoleWriter}, CACerts: string(caPEM),
		LedgerEndpoints: []string{in.ledgerAddrs[id]},
		Admins:          []*policy.Admin{{KeyID: "a1", PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))}}})
	in.doc.Ledger.Consenters = append(in.doc.Ledger.Consenters, id)
	in.L.Members = append(in.L.Members, id)
	return nil
}

// identity makes member id's identity key (in a SoftHSM2 token, or a
// file) and has its CA sign its certificate. It returns the key reference
// for identity.yaml and the certificate.
func (in *initer) identity(id, mdir string, ip netip.Addr, ca *x509.Certificate, caKey hsm.Signer, soft *hsm.SoftOptions) (string, *x509.Certificate, error) {
	var keyRef string
	var idKey hsm.Signer
	if in.mode == "softhsm" {
		pin := filepath.Join(mdir, "pin")
		if err := os.WriteFile(pin, []byte("1234\n"), 0o600); err != nil {
			return "", nil, err
		}
		initToken := exec.Command("softhsm2-util", "--init-token", "--free", "--label", id, "--pin", "1234", "--so-pin", "5678")
		initToken.Env = append(os.Environ(), in.hsmOpts.ModuleEnv...)
		out, err := initToken.CombinedOutput()
		if err != nil {
			return "", nil, fmt.Errorf("softhsm2-util --init-token %s: %v: %s (install softhsm2, or use --hsm soft)", id, err, out)
		}
		ki, err := hsm.GenerateKey(fmt.Sprintf("pkcs11:token=%s;object=identity?module-path=%s&pin-source=file:%s", id, in.module, pin), in.hsmOpts)
		if err != nil {
			return "", nil, err
		}
		keyRef = ki.URI
		if idKey, err = hsm.OpenKey(keyRef, in.hsmOpts); err != nil {
			return "", nil, err
		}
	} else {
		kp := filepath.Join(mdir, "identity", "key.pem")
		var err error
		if idKey, err = hsm.GenerateSoftKey(kp, soft); err != nil {
			return "", nil, err
		}
		keyRef = "file:" + kp
	}
	csr, err := hsm.CreateCSR(idKey, demoCSR(id, ip.String()))
	idKey.Close()
	if err != nil {
		return "", nil, err
	}
	leaf, err := hsm.SignCSR(ca, caKey, csr, hsm.LeafConfig{Now: in.now})
	return keyRef, leaf, err
}

// genesis signs the policy with every member's admin key, writes it and
// builds the channel's genesis block.
func (in *initer) genesis() error {
	docBytes, err := policy.MarshalDocument(in.doc)
	if err != nil {
		return fmt.Errorf("demo genesis policy: %w", err)
	}
	gen, err := policy.Parse(docBytes)
	if err != nil {
		return fmt.Errorf("demo genesis policy: %w", err)
	}
	for _, id := range in.L.Members {
		if gen, err = gen.Sign(in.admins[id], policy.AdminRef{Member: id, KeyID: "a1"}); err != nil {
			return err
		}
	}
	in.gen, in.L.Genesis = gen, gen
	if err := os.WriteFile(filepath.Join(in.dir, "genesis.yaml"), gen.Marshal(), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(in.dir, "genesis.hash"), []byte(gen.Hash().String()+"\n"), 0o644); err != nil {
		return err
	}
	if len(in.o.Channels) == 0 {
		in.ledgerBlock, err = LedgerGenesis(gen, in.leafs, in.now)
		return err
	}
	in.chanBlocks = map[string][]byte{}
	for _, ch := range gen.Channels() {
		v, err := gen.ForChannel(ch)
		if err != nil {
			return err
		}
		if in.chanBlocks[ch], err = LedgerGenesis(v, in.leafs, in.now); err != nil {
			return fmt.Errorf("channel %s: %w", ch, err)
		}
	}
	return nil
}

// configs writes every relay's relay.yaml and every member's memberd.yaml,
// with the genesis in their policy folders.
func (in *initer) configs() error {
	bundle, hash := in.gen.Marshal(), in.gen.Hash().String()
	for _, r := range in.rfs {
		if err := os.WriteFile(filepath.Join(r.dir, "policy", "genesis.yaml"), bundle, 0o644); err != nil {
			return err
		}
		cfg := map[string]any{"id": r.id, "listen": r.addr, "certificate": "relay.crt", "key": "key.pem",
			"insecure_dev_key": true, "admin": "127.0.0.1:0", "policy_dir": "policy", "state_dir": "state", "genesis": hash,
			"limits": map[string]any{"rate_bytes_per_sec": -1}}
		p := filepath.Join(r.dir, "relay.yaml")
		if err := writeYAML(p, "# memberd relay for the demo consortium (INSECURE: the key is a file)\n", cfg); err != nil {
			return err
		}
		in.L.RelayConfig[r.id] = p
	}
	for _, id := range in.L.Members {
		if err := in.memberConfig(id, bundle, hash); err != nil {
			return err
		}
	}
	return nil
}

// memberConfig writes member id's memberd.yaml, genesis bundle and
// channel genesis block.
func (in *initer) memberConfig(id string, bundle []byte, hash string) error {
	mdir := filepath.Join(in.dir, "members", id)
	if err := os.WriteFile(filepath.Join(mdir, "policy", "genesis.yaml"), bundle, 0o644); err != nil {
		return err
	}
	adminAddr, err := in.free()
	if err != nil {
		return err
	}
	ledger := demoLedgerConfig(in.ledgerAddrs[id], "")
	if in.chanBlocks == nil {
		if err := os.WriteFile(filepath.Join(mdir, LedgerGenesisFile), in.ledgerBlock, 0o644); err != nil {
			return err
		}
	} else {
		var files []string
		for _, ch := range in.gen.Channels() {
			f := LedgerChannelGenesisFile(ch)
			if err := os.WriteFile(filepath.Join(mdir, f), in.chanBlocks[ch], 0o644); err != nil {
				return err
			}
			files = append(files, f)
		}
		delete(ledger, "genesis_block")
		ledger["genesis_blocks"] = files
	}
	participationAddr, err := in.free() // osnadmin
	if err != nil {
		return err
	}
	ledger["admin"].(map[string]any)["listen"] = participationAddr
	cfg := map[string]any{"member": id, "identity": "identity",
		"hsm":    map[string]any{"insecure_soft_keys": in.mode == "soft"},
		"policy": map[string]any{"dir": "policy", "state_dir": "state", "genesis": hash},
		"relay":  map[string]any{"no_env_proxy": true, "quic_timeout": "1s"},
		"admin":  adminAddr,
		"ledger": ledger}
	head := "# memberd appliance for the demo consortium\n"
	if in.mode == "softhsm" {
		head += "# its identity key is in SoftHSM2: export SOFTHSM2_CONF=" + in.L.SoftHSMConf + "\n"
	} else {
		head += "# INSECURE: its identity key is a file (hsm.insecure_soft_keys), for the demo only\n"
	}
	p := filepath.Join(mdir, "memberd.yaml")
	if err := writeYAML(p, head, cfg); err != nil {
		return err
	}
	in.L.MemberConfig[id] = p
	return nil
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

package relayd

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/internal/usage"
	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/relay"
)

// listenSamePort opens TCP and UDP on the same address; with port 0 it
// finds a port free for both.
func listenSamePort(addr string) (net.Listener, net.PacketConn, error) {
	_, port, _ := net.SplitHostPort(addr)
	tries := 1
	if port == "0" {
		tries = 20
	}
	var lastErr error
	for range tries {
		tl, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, err
		}
		udp, err := net.ListenPacket("udp", tl.Addr().String())
		if err == nil {
			return tl, udp, nil
		}
		tl.Close()
		lastErr = err
	}
	return nil, nil, lastErr
}

// loadIdentity loads the certificate and opens its key (PKCS#11, or a dev
// PEM file when insecure_dev_key is set) and checks they belong together.
func loadIdentity(cfg *Config, log *slog.Logger) (tls.Certificate, func(), error) {
	b, err := os.ReadFile(cfg.Path(cfg.Certificate))
	if err != nil {
		return tls.Certificate{}, nil, usage.Errorf("key certificate: %v", err)
	}
	certs, err := hsm.ParseCertificatesPEM(b)
	if err != nil || len(certs) == 0 {
		return tls.Certificate{}, nil, usage.Errorf("key certificate: %s holds no PEM certificate (%v)", cfg.Path(cfg.Certificate), err)
	}
	var signer hsm.Signer
	if cfg.InsecureDevKey {
		log.Warn("INSECURE: the relay's TLS key is a file, for development only", "file", cfg.Path(cfg.Key))
		// Each use of the key warns through the logger (a plain line on
		// stderr would break the JSON log stream).
		signer, err = hsm.OpenSoftSigner(cfg.Path(cfg.Key), &hsm.SoftOptions{AllowInsecure: true, Warnings: io.Discard, Logger: log})
	} else {
		signer, err = hsm.OpenSigner(cfg.Key, &hsm.Options{Logger: log})
	}
	if err != nil {
		return tls.Certificate{}, nil, usage.Errorf("key key: %v", err)
	}
	if !publicKeysEqual(certs[0].PublicKey, signer.Public()) {
		signer.Close()
		return tls.Certificate{}, nil, usage.Errorf("key key: does not match the public key of the certificate in %s", cfg.Path(cfg.Certificate))
	}
	tc := tls.Certificate{PrivateKey: signer, Leaf: certs[0]}
	for _, c := range certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc, func() { signer.Close() }, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// policyWatcher loads the signed policy of policy_dir.
func policyWatcher(cfg *Config, log *slog.Logger, reg prometheus.Registerer) (*policy.Watcher, error) {
	var pin policy.Hash
	if cfg.Genesis != "" {
		pin, _ = policy.ParseHash(cfg.Genesis) // checked by validate
	}
	w, err := policy.NewWatcher(policy.Options{Dir: cfg.Path(cfg.PolicyDir), StateDir: cfg.Path(cfg.StateDir),
		Genesis: pin, Logger: log, Registerer: reg})
	if err != nil {
		return nil, fmt.Errorf("relay policy (keys policy_dir, state_dir, genesis): %w", err)
	}
	if relayInPolicy(w.Current(), cfg.ID) {
		return w, nil
	}
	return nil, usage.Errorf("key id: relay %q is not listed in policy version %d", cfg.ID, w.Current().Version())
}

func relayInPolicy(p *policy.Policy, id string) bool {
	for _, r := range p.Relays() {
		if r.ID == id {
			return true
		}
	}
	return false
}

// staticAuthority builds the static policy from the config.
func staticAuthority(cfg *Config) (relay.Authority, error) {
	p := relay.StaticPolicy{MemberCAs: map[string][]*x509.Certificate{}, AllowAll: cfg.Policy.AllowAll}
	load := func(key, file string) ([]*x509.Certificate, error) {
		b, err := os.ReadFile(cfg.Path(file))
		if err != nil {
			return nil, usage.Errorf("key %s: %v", key, err)
		}
		cs, err := hsm.ParseCertificatesPEM(b)
		if err != nil || len(cs) == 0 {
			return nil, usage.Errorf("key %s: %s holds no PEM certificate (%v)", key, cfg.Path(file), err)
		}
		return cs, nil
	}
	for m, mem := range cfg.Policy.Members {
		for _, f := range mem.CA {
			cs, err := load("policy.members."+m+".ca", f)
			if err != nil {
				return nil, err
			}
			p.MemberCAs[m] = append(p.MemberCAs[m], cs...)
		}
	}
	for _, f := range cfg.Policy.Revoked {
		cs, err := load("policy.revoked", f)
		if err != nil {
			return nil, err
		}
		p.Revoked = append(p.Revoked, cs...)
	}
	for _, pair := range cfg.Policy.Allow {
		p.Allow = append(p.Allow, [2]string{pair[0], pair[1]})
	}
	for _, r := range cfg.Policy.Relays {
		p.Relays = append(p.Relays, relay.RelayInfo{ID: r.ID, Addr: r.Addr, Pin: r.Pin})
	}
	a, err := relay.NewStaticAuthority(p)
	if err != nil {
		return nil, usage.Errorf("key policy: %v", err)
	}
	return a, nil
}

package identity

import (
	"bytes"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/memberd/memberd/hsm"
)

type identityFile struct {
	Key  string   `yaml:"key"`
	Keys []string `yaml:"keys"`
}

// maxIdentityFile bounds identity.yaml.
const maxIdentityFile = 64 << 10

// parseIdentityFile reads identity.yaml: "key: URI" and/or "keys: [URI...]";
// unknown fields are an error. It returns the key references, key first.
func parseIdentityFile(b []byte) ([]string, error) {
	if len(b) > maxIdentityFile {
		return nil, fmt.Errorf("larger than %d bytes", maxIdentityFile)
	}
	var f identityFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("%v (want 'keys: [pkcs11:...]' or 'key: pkcs11:...')", err)
	}
	uris := f.Keys
	if f.Key != "" {
		uris = append([]string{f.Key}, uris...)
	}
	if len(uris) == 0 {
		return nil, errors.New("lists no key (want 'keys: [pkcs11:...]')")
	}
	for i, u := range uris {
		if u == "" {
			return nil, fmt.Errorf("key %d is empty", i+1)
		}
	}
	return uris, nil
}

// load builds the identity the folder names now. Called with reloadMu.
func (p *Provider) load() (*Identity, error) {
	idPath := filepath.Join(p.dir, File)
	b, err := os.ReadFile(idPath)
	if err != nil {
		return nil, fmt.Errorf("%w: %v: create %s listing the key URIs (keys: [pkcs11:...])", ErrNoIdentity, err, idPath)
	}
	uris, err := parseIdentityFile(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrNoIdentity, idPath, err)
	}
	// Open keys not yet open.
	for _, uri := range uris {
		if _, ok := p.signers[uri]; ok {
			continue
		}
		s, err := p.opts.OpenKey(uri, p.opts.Keys)
		if err != nil {
			if p.keyErrs[uri] != err.Error() {
				p.log.Warn("identity key cannot be opened; skipping it", "file", idPath, "key", hsm.RedactURI(uri), "error", err.Error())
				p.keyErrs[uri] = err.Error()
			}
			continue
		}
		delete(p.keyErrs, uri)
		p.signers[uri] = s
	}
	// Certificates.
	entries, err := os.ReadDir(p.dir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoIdentity, err)
	}
	now := p.opts.Now()
	var best *Identity
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !(strings.HasSuffix(name, ".pem") || strings.HasSuffix(name, ".crt")) {
			continue
		}
		path := filepath.Join(p.dir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			p.log.Warn("identity certificate unreadable; ignoring it", "file", path, "error", err.Error())
			continue
		}
		certs, err := hsm.ParseCertificatesPEM(data)
		if err != nil {
			p.log.Warn("identity certificate file invalid; ignoring it", "file", path, "error", err.Error())
			continue
		}
		leaf := certs[0]
		uri, s := p.matchKey(uris, leaf.PublicKey)
		if s == nil {
			continue
		}
		if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
			continue
		}
		cand := &Identity{KeyURI: uri, Signer: s, Certificate: leaf, Chain: certs[1:], File: path}
		tc := buildTLSCertificate(cand)
		cand.tlsCert = &tc
		if best == nil || better(cand, best) {
			best = cand
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: no certificate file (*.pem, *.crt) in %s is valid now and matches a key listed in %s (%d listed, %d opened)", ErrNoIdentity, p.dir, File, len(uris), p.openCount(uris))
	}
	return best, nil
}

func (p *Provider) openCount(uris []string) int {
	n := 0
	for _, u := range uris {
		if p.signers[u] != nil {
			n++
		}
	}
	return n
}

func (p *Provider) matchKey(uris []string, pub crypto.PublicKey) (string, hsm.Signer) {
	for _, u := range uris {
		if s := p.signers[u]; s != nil && hsm.PublicKeysEqual(s.Public(), pub) {
			return u, s
		}
	}
	return "", nil
}

func better(a, b *Identity) bool {
	ac, bc := a.Certificate, b.Certificate
	if !ac.NotBefore.Equal(bc.NotBefore) {
		return ac.NotBefore.After(bc.NotBefore)
	}
	if !ac.NotAfter.Equal(bc.NotAfter) {
		return ac.NotAfter.After(bc.NotAfter)
	}
	return a.File > b.File
}

//go:build e2e

package e2e_test

// The HSM: a member's SoftHSM2 token made unavailable while it runs, and
// the key properties users rely on (non-extractable, never on disk).

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/memberd/memberd/internal/testenv"
)

// tokenDir returns the SoftHSM2 token folder of the token labelled label.
func (s *suite) tokenDir(t *testing.T, label string) string {
	t.Helper()
	dirs, err := filepath.Glob(filepath.Join(s.cl.layout.Dir, "tokens", "*", "token.object"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range dirs {
		if b, err := os.ReadFile(f); err == nil && bytes.Contains(b, []byte(label)) {
			return filepath.Dir(f)
		}
	}
	t.Fatalf("no SoftHSM2 token folder for %q among %v", label, dirs)
	return ""
}

// hsmTokenLoss: a follower's token folder is moved away while it runs (the
// token is gone, as an unplugged HSM), then put back. The member must say
// so in /readyz (check hsm) and /status and the metric memberd_hsm_up, not
// die, and be ready again once the token is back; the load goes on.
func (s *suite) hsmTokenLoss(t *testing.T) {
	cl := s.cl
	p := s.follower(t)
	dir := s.tokenDir(t, p.name)
	failures0, _, _ := s.metric(p, "memberd_hsm_check_failures_total")
	// Out of the token folder: SoftHSM2 reads every folder in it, whatever
	// its name.
	aside := filepath.Join(s.cl.dir, filepath.Base(dir)+".gone")
	if err := os.Rename(dir, aside); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := os.Rename(aside, dir); err != nil {
				t.Error(err)
			}
		}
	}
	defer restore()
	var readyErr error
	var st map[string]any
	seen, ok := waitFor(20*time.Second, func() bool {
		_, readyErr = cl.get(p, "/readyz")
		up, _, err := s.metric(p, "memberd_hsm_up")
		return readyErr != nil && strings.Contains(readyErr.Error(), "hsm") && err == nil && up == 0
	})
	if !ok {
		t.Errorf("%s: /readyz and memberd_hsm_up do not report the token gone 20 s after: readyz %v", p.name, readyErr)
	}
	if body, err := cl.get(p, "/status"); err == nil {
		st = jsonMap(body)
	}
	hsmDoc, _ := st["hsm"].(map[string]any)
	if hsmDoc == nil || hsmDoc["ok"] != false || !strings.Contains(fmt.Sprint(hsmDoc["error"]), p.name) {
		t.Errorf("%s /status hsm while the token is gone: %v; want ok false and an error naming token %q", p.name, hsmDoc, p.name)
	}
	time.Sleep(3 * time.Second) // a few failed checks: nothing may crash
	cl.checkAlive(t)
	a0 := s.load.ackedCount()
	restore()
	back, okBack := waitFor(30*time.Second, func() bool {
		if cl.ready(p) != nil {
			return false
		}
		up, _, err := s.metric(p, "memberd_hsm_up")
		return err == nil && up == 1
	})
	if !okBack {
		_, err := cl.get(p, "/readyz")
		t.Errorf("%s not ready 30 s after its token is back: %v", p.name, err)
	}
	failures, _, _ := s.metric(p, "memberd_hsm_check_failures_total")
	if failures-failures0 < 1 {
		t.Errorf("memberd_hsm_check_failures_total did not grow (%v -> %v)", failures0, failures)
	}
	if _, ok := waitFor(30*time.Second, func() bool { return s.load.ackedCount() > a0 }); !ok {
		t.Errorf("no envelope acked within 30 s after the token came back")
	}
	if !strings.Contains(p.output(), "identity key in the HSM cannot sign") {
		t.Errorf("%s logged no error line about the HSM", p.name)
	}
	cl.checkAlive(t)
	s.record(t, "HSM token gone while running, then back", fmt.Sprintf("%s's token folder moved away: /readyz 503 (hsm) and memberd_hsm_up 0 after %.2f s (%q); %v failed checks; ready again %.2f s after the token was back; %s",
		p.name, seen.Seconds(), trunc(fmt.Sprint(hsmDoc["error"]), 90), failures-failures0, back.Seconds(), s.checkLedger(t)))
}

// hsmKeysSafe: every member's identity key in SoftHSM2 is sensitive and
// non-extractable (checked through PKCS#11 with the member's PIN; reading
// CKA_VALUE is refused), and no private key material is in any member's or
// relay's state: no PEM private key and none of the demo's software
// private keys (CA, admin, client, relay) in the state, ledger, identity
// and policy folders.
func (s *suite) hsmKeysSafe(t *testing.T) {
	cl := s.cl
	module, _ := testenv.SoftHSMModule(t)
	os.Setenv("SOFTHSM2_CONF", cl.layout.SoftHSMConf)
	ctx := pkcs11.New(module)
	if ctx == nil {
		t.Fatalf("loading %s failed", module)
	}
	defer ctx.Destroy()
	if err := ctx.Initialize(); err != nil {
		t.Fatal(err)
	}
	defer ctx.Finalize()
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		t.Fatal(err)
	}
	var figs []string
	for _, m := range cl.layout.Members {
		pin := strings.TrimSpace(string(readFile(t, filepath.Join(filepath.Dir(cl.layout.MemberConfig[m]), "pin"))))
		var slot uint
		found := false
		for _, sl := range slots {
			if ti, err := ctx.GetTokenInfo(sl); err == nil && strings.TrimRight(ti.Label, " \x00") == m {
				slot, found = sl, true
			}
		}
		if !found {
			t.Errorf("no token %q", m)
			continue
		}
		sh, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
		if err != nil {
			t.Fatal(err)
		}
		if err := ctx.Login(sh, pkcs11.CKU_USER, pin); err != nil && !strings.Contains(err.Error(), "ALREADY_LOGGED_IN") {
			t.Fatalf("%s: login: %v", m, err)
		}
		if err := ctx.FindObjectsInit(sh, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}); err != nil {
			t.Fatal(err)
		}
		keys, _, err := ctx.FindObjects(sh, 16)
		ctx.FindObjectsFinal(sh)
		if err != nil || len(keys) == 0 {
			t.Errorf("%s: no private key found (%v)", m, err)
		}
		for _, k := range keys {
			attrs, err := ctx.GetAttributeValue(sh, k, []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil),
				pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, nil),
				pkcs11.NewAttribute(pkcs11.CKA_NEVER_EXTRACTABLE, nil), pkcs11.NewAttribute(pkcs11.CKA_ALWAYS_SENSITIVE, nil)})
			if err != nil {
				t.Errorf("%s: reading key attributes: %v", m, err)
				continue
			}
			label, ext, sens, never, always := string(attrs[0].Value), boolAttr(attrs[1]), boolAttr(attrs[2]), boolAttr(attrs[3]), boolAttr(attrs[4])
			if ext || !sens || !never || !always {
				t.Errorf("%s key %q: CKA_EXTRACTABLE %v CKA_SENSITIVE %v CKA_NEVER_EXTRACTABLE %v CKA_ALWAYS_SENSITIVE %v; want false true true true", m, label, ext, sens, never, always)
			}
			_, verr := ctx.GetAttributeValue(sh, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
			if verr == nil {
				t.Errorf("%s key %q: CKA_VALUE (the private value) was readable", m, label)
			}
			figs = append(figs, fmt.Sprintf("%s/%s extractable=%v sensitive=%v value read: %v", m, label, ext, sens, trunc(fmt.Sprint(verr), 40)))
		}
		ctx.Logout(sh)
		ctx.CloseSession(sh)
	}

	// The software private keys the demo wrote (to look for their bytes).
	var secrets [][]byte
	var keyFiles []string
	filepath.WalkDir(cl.layout.Dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(path)
		for rest := b; ; {
			var blk *pem.Block
			blk, rest = pem.Decode(rest)
			if blk == nil {
				break
			}
			if strings.Contains(blk.Type, "PRIVATE KEY") {
				keyFiles = append(keyFiles, path)
				secrets = append(secrets, blk.Bytes)
				if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
					if ek, ok := k.(*ecdsa.PrivateKey); ok {
						secrets = append(secrets, ek.D.FillBytes(make([]byte, 32)))
					}
				} else if ek, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
					secrets = append(secrets, ek.D.FillBytes(make([]byte, 32)))
				}
			}
		}
		return nil
	})
	if len(secrets) == 0 {
		t.Fatal("found no software private key of the demo to look for: the scan proves nothing")
	}
	var stateDirs []string
	for _, p := range cl.procs {
		if p.argv != nil {
			continue
		}
		d := filepath.Dir(p.config)
		for _, sub := range []string{"state", "ledger", "identity", "policy"} {
			if _, err := os.Stat(filepath.Join(d, sub)); err == nil {
				stateDirs = append(stateDirs, filepath.Join(d, sub))
			}
		}
	}
	files, size := 0, int64(0)
	for _, d := range stateDirs {
		filepath.WalkDir(d, func(path string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() || !e.Type().IsRegular() {
				return nil
			}
			b, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			files++
			size += int64(len(b))
			if bytes.Contains(b, []byte("PRIVATE KEY")) {
				t.Errorf("%s holds a PEM private key", path)
			}
			for i, sec := range secrets {
				if bytes.Contains(b, sec) {
					t.Errorf("%s holds private key material (secret %d from the demo's key files)", path, i)
				}
			}
			return nil
		})
	}
	if files == 0 {
		t.Errorf("no file in the state folders %v", stateDirs)
	}
	s.record(t, "HSM keys non-extractable, no key material in state", fmt.Sprintf("%s; %d state files (%d bytes) in %d folders scanned for PEM private keys and %d secrets of %d demo key files: none found",
		strings.Join(figs, "; "), files, size, len(stateDirs), len(secrets), len(keyFiles)))
}

func jsonMap(b []byte) map[string]any {
	m := map[string]any{}
	json.Unmarshal(b, &m)
	return m
}

func boolAttr(a *pkcs11.Attribute) bool { return len(a.Value) > 0 && a.Value[0] != 0 }

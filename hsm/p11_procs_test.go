//go:build cgo

package hsm_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
)

// childKeyEnv names the key a child process of TestParallelProcessesOneToken
// opens and signs with.
const childKeyEnv = "MEMBERD_HSM_TEST_CHILD_KEY"

// TestParallelProcessesOneToken starts rounds of 8 processes at once, each
// loading SoftHSM2, logging in to the SAME token and signing, as parallel
// 'memberd ledger submit' runs do. With SoftHSM2 2.6.1 a process that
// initialises the module while another logs in can see the token missing or
// without a user PIN (p11_module.go); every process must still succeed.
func TestParallelProcessesOneToken(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 40 processes")
	}
	tok := hsmtest.NewToken(t, "member-a")
	tok.GenerateKey(t, "identity")
	const rounds, procs = 5, 8
	var failed []string
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		var mu sync.Mutex
		for p := 0; p < procs; p++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := exec.Command(os.Args[0], "-test.run=^TestChildSignsOnce$", "-test.count=1", "-test.v")
				cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+tok.Conf, childKeyEnv+"="+tok.KeyURI("identity"))
				out, err := cmd.CombinedOutput()
				if err != nil || !strings.Contains(string(out), "child signed") {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("round %d process %d: %v: %s", r, p, err, out))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d processes failed:\n%s", len(failed), rounds*procs, strings.Join(failed, "\n"))
	}
	t.Logf("%d processes in %d rounds of %d on one token: all signed", rounds*procs, rounds, procs)
}

// TestChildSignsOnce is the child process of TestParallelProcessesOneToken
// (it does nothing unless started by it).
func TestChildSignsOnce(t *testing.T) {
	uri := os.Getenv(childKeyEnv)
	if uri == "" {
		t.Skip("child of TestParallelProcessesOneToken only")
	}
	s, err := hsm.OpenSigner(uri, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := sha256.Sum256([]byte("parallel"))
	sig, err := s.Sign(rand.Reader, d[:], nil)
	if err != nil {
		t.Fatal(err)
	}
	if !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("signature does not verify")
	}
	fmt.Println("child signed")
}

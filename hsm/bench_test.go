//go:build cgo

package hsm_test

// Signing throughput, all in one run so the ratios are meaningful:
//
//	BenchmarkSign/n=N/pool   hsm.Signer (session pool) with N goroutines
//	BenchmarkSign/n=N/raw    miekg/pkcs11 directly, N goroutines each with
//	                         its own session (the module's multi-session rate)
//	BenchmarkSign/n=N/go     crypto/ecdsa in process, N goroutines
//
// Each reports signs/s. Target: pool >= 0.9x raw at the same N.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/memberd/memberd/hsm"
	"github.com/memberd/memberd/hsm/hsmtest"
)

// parallelSign runs b.N calls of sign split over n goroutines.
func parallelSign(b *testing.B, n int, sign func(worker int, digest []byte) error) {
	b.Helper()
	digest := sha256.Sum256([]byte("benchmark"))
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := sign(w, digest[:]); err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
}

func BenchmarkSign(b *testing.B) {
	tok := hsmtest.NewToken(b, "bench")
	s := tok.NewKey(b, "tls") // keeps the module loaded and logged in
	counts := []int{1, 2, 4, 8}

	// Raw: a second handle on the same (already initialised) module.
	ctx := pkcs11.New(tok.Module)
	if ctx == nil {
		b.Fatal("pkcs11.New failed")
	}
	defer ctx.Destroy() // no Finalize: the module is shared with s
	if err := ctx.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		b.Fatal(err)
	}
	slot := findSlot(b, ctx, tok.Label)
	goKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}

	// Interleaved per N, so that load from other processes hits all three.
	for _, n := range counts {
		b.Run(fmt.Sprintf("n=%d/pool", n), func(b *testing.B) {
			parallelSign(b, n, func(_ int, d []byte) error {
				_, err := s.Sign(nil, d, crypto.SHA256)
				return err
			})
		})
		b.Run(fmt.Sprintf("n=%d/raw", n), func(b *testing.B) {
			sessions := make([]pkcs11.SessionHandle, n)
			keys := make([]pkcs11.ObjectHandle, n)
			for i := range sessions {
				sh, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
				if err != nil {
					b.Fatal(err)
				}
				defer ctx.CloseSession(sh)
				if err := ctx.Login(sh, pkcs11.CKU_USER, hsmtest.UserPIN); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
					b.Fatal(err)
				}
				sessions[i], keys[i] = sh, findPrivateKey(b, ctx, sh, "tls")
			}
			parallelSign(b, n, func(w int, d []byte) error {
				if err := ctx.SignInit(sessions[w], mech, keys[w]); err != nil {
					return err
				}
				_, err := ctx.Sign(sessions[w], d)
				return err
			})
		})
		b.Run(fmt.Sprintf("n=%d/go", n), func(b *testing.B) {
			parallelSign(b, n, func(_ int, d []byte) error {
				_, err := ecdsa.SignASN1(rand.Reader, goKey, d)
				return err
			})
		})
	}
}

// BenchmarkSignPoolVsRaw measures the pool against raw sessions in
// alternating bursts (each iteration: 64 signatures through the pool with N
// callers, then 64 through N raw sessions), so that load from other
// processes on a shared machine hits both alike. Reports both rates and the
// ratio pool/raw (target >= 0.9).
func BenchmarkSignPoolVsRaw(b *testing.B) {
	tok := hsmtest.NewToken(b, "bench")
	s := tok.NewKey(b, "tls")
	ctx := pkcs11.New(tok.Module)
	if ctx == nil {
		b.Fatal("pkcs11.New failed")
	}
	defer ctx.Destroy()
	if err := ctx.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		b.Fatal(err)
	}
	slot := findSlot(b, ctx, tok.Label)
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}
	digest := sha256.Sum256([]byte("benchmark"))
	const burst = 64
	for _, n := range []int{1, 2, 4, 8} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			sessions := make([]pkcs11.SessionHandle, n)
			keys := make([]pkcs11.ObjectHandle, n)
			for i := range sessions {
				sh, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
				if err != nil {
					b.Fatal(err)
				}
				defer ctx.CloseSession(sh)
				sessions[i], keys[i] = sh, findPrivateKey(b, ctx, sh, "tls")
			}
			run := func(sign func(w int) error) (time.Duration, error) {
				var wg sync.WaitGroup
				var next atomic.Int64
				errs := make(chan error, n)
				start := time.Now()
				for w := 0; w < n; w++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= burst {
							if err := sign(w); err != nil {
								errs <- err
								return
							}
						}
					}()
				}
				wg.Wait()
				close(errs)
				return time.Since(start), <-errs
			}
			var poolT, rawT time.Duration
			for b.Loop() {
				d, err := run(func(int) error { _, err := s.Sign(nil, digest[:], crypto.SHA256); return err })
				if err != nil {
					b.Fatal(err)
				}
				poolT += d
				d, err = run(func(w int) error {
					if err := ctx.SignInit(sessions[w], mech, keys[w]); err != nil {
						return err
					}
					_, err := ctx.Sign(sessions[w], digest[:])
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				rawT += d
			}
			sigs := float64(b.N * burst)
			b.ReportMetric(sigs/poolT.Seconds(), "pool_signs/s")
			b.ReportMetric(sigs/rawT.Seconds(), "raw_signs/s")
			b.ReportMetric(rawT.Seconds()/poolT.Seconds(), "pool/raw")
			b.ReportMetric(0, "ns/op")
		})
	}
}

func findSlot(tb testing.TB, ctx *pkcs11.Ctx, label string) uint {
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		tb.Fatal(err)
	}
	for _, sl := range slots {
		if ti, err := ctx.GetTokenInfo(sl); err == nil && ti.Label == label {
			return sl
		}
	}
	tb.Fatalf("token %q not found", label)
	return 0
}

func findPrivateKey(tb testing.TB, ctx *pkcs11.Ctx, sh pkcs11.SessionHandle, label string) pkcs11.ObjectHandle {
	if err := ctx.FindObjectsInit(sh, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)}); err != nil {
		tb.Fatal(err)
	}
	hs, _, err := ctx.FindObjects(sh, 1)
	if err2 := ctx.FindObjectsFinal(sh); err == nil {
		err = err2
	}
	if err != nil || len(hs) != 1 {
		tb.Fatalf("private key %q: %v (%d found)", label, err, len(hs))
	}
	return hs[0]
}

// BenchmarkParseURI measures the URI parser (it runs once per key open).
func BenchmarkParseURI(b *testing.B) {
	const s = "pkcs11:token=member-a;object=tls;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/memberd/hsm.pin"
	for b.Loop() {
		if _, err := hsm.ParseURI(s); err != nil {
			b.Fatal(err)
		}
	}
}

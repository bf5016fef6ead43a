//go:build cgo

package hsmtest

import (
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"
)

const haveCgo = true

// initToken initialises a free SoftHSM2 slot as a new token through the
// PKCS#11 API (C_InitToken, C_InitPIN), like softhsm2-util --init-token
// --free does, but in this process: SoftHSM2 reads its token directory only
// at C_Initialize, so a token made by a separate process would be invisible
// while the module is loaded here (e.g. a second token in the same test).
func initToken(module, label string, firstOfTest bool) error {
	ctx := pkcs11.New(module)
	if ctx == nil {
		return fmt.Errorf("cannot load %s", module)
	}
	defer ctx.Destroy()
	ours := true
	if err := ctx.Initialize(); err != nil {
		if !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			return fmt.Errorf("C_Initialize: %w", err)
		}
		if firstOfTest {
			// The module still points at an earlier test's token directory.
			return errors.New("the PKCS#11 module is still initialised by an earlier test: a signer was not closed (close it in t.Cleanup) or tests using hsmtest run in parallel")
		}
		ours = false // loaded by an open signer of this test: share it, do not finalise
	}
	if ours {
		defer ctx.Finalize()
	}
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("C_GetSlotList: %w", err)
	}
	for _, sl := range slots {
		ti, err := ctx.GetTokenInfo(sl)
		if err != nil {
			return fmt.Errorf("C_GetTokenInfo: %w", err)
		}
		if ti.Label == label && ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			return fmt.Errorf("a token labelled %q exists already in this test", label)
		}
	}
	for _, sl := range slots {
		ti, err := ctx.GetTokenInfo(sl)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 {
			continue
		}
		if err := ctx.InitToken(sl, SOPIN, label); err != nil {
			return fmt.Errorf("C_InitToken: %w", err)
		}
		sh, err := ctx.OpenSession(sl, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return fmt.Errorf("C_OpenSession: %w", err)
		}
		defer ctx.CloseSession(sh)
		if err := ctx.Login(sh, pkcs11.CKU_SO, SOPIN); err != nil {
			return fmt.Errorf("C_Login(SO): %w", err)
		}
		if err := ctx.InitPIN(sh, UserPIN); err != nil {
			return fmt.Errorf("C_InitPIN: %w", err)
		}
		if err := ctx.Logout(sh); err != nil {
			return fmt.Errorf("C_Logout: %w", err)
		}
		return nil
	}
	return errors.New("no free slot (SoftHSM2 always offers one: check SOFTHSM2_CONF)")
}

//go:build !cgo

package hsmtest

import "errors"

const haveCgo = false

func initToken(module, label string, firstOfTest bool) error {
	return errors.New("hsmtest needs cgo (PKCS#11): build the tests with CGO_ENABLED=1")
}

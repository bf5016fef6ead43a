// Package hsm gives memberd its identity: private keys that never leave a
// PKCS#11 HSM, exposed as crypto.Signer.
//
//   - Keys are named by PKCS#11 URIs (RFC 7512, see ParseURI), the convention
//     of p11-kit, OpenSSL and GnuTLS. The PIN comes from pin-source (a file or
//     a systemd credential); pin-value is refused unless Options.AllowPINValue.
//   - OpenSigner opens an ECDSA P-256 key by URI and signs through a bounded
//     session pool; signatures are ASN.1 DER with low S (as Fabric requires).
//     Sessions that the module invalidates are dropped and reopened, with a
//     fresh login.
//   - GenerateKey, ListKeys, CreateCSR and SelfTest back `memberd hsm`;
//     NewCACertificate and SignCSR back `memberd ca`.
//   - OpenSoftSigner is a key in a PEM file, for the demo and development
//     only: refused unless explicitly allowed, and it warns on every use.
//
// cgo is needed for PKCS#11 (github.com/miekg/pkcs11); without cgo the
// PKCS#11 functions return ErrNoCgo and the rest of the package still works.
package hsm

package app

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/hsm"
)

// keyFlags are the flags every command that opens a key shares.
type keyFlags struct {
	key           string
	module        string
	allowPINValue bool
	insecureFile  bool
	fileAllowed   bool // the command takes file: keys with --insecure-file-key
}

const keyHelp = `PKCS#11 URI (RFC 7512) of the key, e.g.
'pkcs11:token=member-a;object=tls?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/memberd/hsm.pin'
(the PIN comes from pin-source=file:/path or cred:NAME, a systemd credential; never from a flag)`

func (f *keyFlags) register(c *cobra.Command, what string, allowFile bool) {
	help := keyHelp
	f.fileAllowed = allowFile
	if allowFile {
		help += "; or file:/path/key.pem with --insecure-file-key (development only)"
	}
	c.Flags().StringVar(&f.key, "key", "", what+": "+help)
	c.Flags().StringVar(&f.module, "module", "", "PKCS#11 module used when the URI has no module-path")
	c.Flags().BoolVar(&f.allowPINValue, "allow-pin-value", false, "DEVELOPMENT ONLY: accept a PIN written in the URI (pin-value=)")
	if allowFile {
		c.Flags().BoolVar(&f.insecureFile, "insecure-file-key", false, "DEVELOPMENT ONLY: allow a software key in a PEM file (file:/path), not an HSM")
	}
}

func (f *keyFlags) options(e *env) *hsm.Options {
	return &hsm.Options{AllowPINValue: f.allowPINValue, ModulePath: f.module, AllowSoftKeys: f.insecureFile,
		SoftWarnings: e.stderr, Logger: e.log}
}

// check validates the --key flag syntax (usage errors, exit 2).
func (f *keyFlags) check(cmd *cobra.Command) error {
	if f.key == "" {
		return usagef("%s: --key is required (see '%s --help')", cmd.CommandPath(), cmd.CommandPath())
	}
	if strings.HasPrefix(f.key, "file:") {
		if !f.insecureFile {
			return usagef("%s: --key %s is a software key: %v; pass --insecure-file-key to use it for development", cmd.CommandPath(), f.key, hsm.ErrInsecureRefused)
		}
		return nil
	}
	if _, err := hsm.ParseURI(f.key); err != nil {
		return &UsageError{Err: fmt.Errorf("%s: --key: %w%s", cmd.CommandPath(), err, f.fileHint())}
	}
	return nil
}

// fileHint completes the error for a --key that is neither a PKCS#11 URI
// nor a file: key: most often a bare PEM path, as the demo writes them.
func (f *keyFlags) fileHint() string {
	if len(f.key) >= 7 && strings.EqualFold(f.key[:7], "pkcs11:") {
		return ""
	}
	if !f.fileAllowed {
		return "; this command takes HSM keys only (pkcs11:...)"
	}
	return fmt.Sprintf("; a key in a PEM file (the demo's and development keys) is given as --key file:%s --insecure-file-key", f.key)
}

// hsmError turns configuration mistakes found while opening a key into
// usage errors (exit 2); the rest stay runtime errors (exit 1).
func hsmError(cmd *cobra.Command, err error) error {
	if err == nil {
		return nil
	}
	err = fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	for _, u := range []error{hsm.ErrBadURI, hsm.ErrPINValueRefused, hsm.ErrInsecureRefused} {
		if errors.Is(err, u) {
			return &UsageError{Err: err}
		}
	}
	return err
}

func newHSMCmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "hsm",
		Short: "HSM keys: list, keygen, csr, selftest",
		Long: `Manage the appliance's keys in a PKCS#11 HSM.

Keys are named by PKCS#11 URIs (RFC 7512). The token is found by its label,
never by slot number. The PIN is read from pin-source=file:/path (mode 0600)
or pin-source=cred:NAME (systemd credential in $CREDENTIALS_DIRECTORY); a PIN
in the URI (pin-value=) is refused unless --allow-pin-value (development).`,
	}
	c.AddCommand(newHSMListCmd(e), newHSMKeygenCmd(e), newHSMCSRCmd(e), newHSMSelftestCmd(e))
	return c
}

func newHSMKeygenCmd(e *env) *cobra.Command {
	var f keyFlags
	c := &cobra.Command{
		Use:   "keygen --key 'pkcs11:token=LABEL;object=NAME[;id=%01]?module-path=...&pin-source=file:...'",
		Short: "Generate an ECDSA P-256 key pair in the HSM (sensitive, not extractable)",
		Long: `Generate an ECDSA P-256 key pair in the token named by --key, with the label
object= and the CKA_ID id= (random when absent). The private key is a token
object, private, sensitive and never extractable. Prints the key's URI (with
its id) and its public key (PEM). Refuses to reuse a label or id.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(cmd); err != nil {
				return err
			}
			ki, err := hsm.GenerateKey(f.key, f.options(e))
			if err != nil {
				return hsmError(cmd, err)
			}
			der, err := x509.MarshalPKIXPublicKey(ki.Public)
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "generated %s key %q id %s\nuri: %s\n%s", ki.Type, ki.Label, hex.EncodeToString(ki.ID), ki.URI, hsm.EncodePEM("PUBLIC KEY", der))
			return nil
		},
	}
	f.register(c, "the key to create", false)
	return c
}

func newHSMListCmd(e *env) *cobra.Command {
	var f keyFlags
	c := &cobra.Command{
		Use:   "list --key 'pkcs11:token=LABEL?module-path=...&pin-source=file:...'",
		Short: "List the keys of a token (object=/id= narrow the list)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(cmd); err != nil {
				return err
			}
			keys, err := hsm.ListKeys(f.key, f.options(e))
			if err != nil {
				return hsmError(cmd, err)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "LABEL\tID\tTYPE\tPRIVATE\tPUBLIC\tURI")
			for _, k := range keys {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%s\n", k.Label, hex.EncodeToString(k.ID), k.Type, k.HasPrivate, k.HasPublic, k.URI)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			if len(keys) == 0 {
				fmt.Fprintln(e.stderr, "no keys (private keys are listed only with a PIN: add pin-source=file:/path to the URI)")
			}
			return nil
		},
	}
	f.register(c, "the token", false)
	return c
}

func newHSMCSRCmd(e *env) *cobra.Command {
	var (
		f        keyFlags
		cn, out  string
		orgs     []string
		ous      []string
		dnsNames []string
		ips      []string
	)
	c := &cobra.Command{
		Use:   "csr --key URI --cn NAME [--org ORG] [--ou UNIT]... [--dns NAME]... [--ip ADDR]... [--out csr.pem]",
		Short: "Make a certificate signing request (PKCS #10, PEM) signed by the HSM key",
		Long: `Make a PKCS #10 certificate signing request signed by the HSM key, for the
member CA ('memberd ca sign' keeps the subject, its OUs and the SANs).

Fabric roles come from the subject's organizational unit when the channel's
MSPs enable NodeOUs (memberd's channels do): a ledger node that signs blocks
needs --ou orderer, a Fabric peer --ou peer, an admin --ou admin and an
application client --ou client. A TLS server certificate needs a SAN for
every address it is dialled on (--ip 127.0.0.1 --ip 192.0.2.10 --dns
ledger.example.com): Fabric peers check the host name and ignore the CN.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(cmd); err != nil {
				return err
			}
			if cn == "" {
				return usagef("%s: --cn is required (the certificate's common name, e.g. node1.member-a)", cmd.CommandPath())
			}
			req := hsm.CSRRequest{Subject: pkix.Name{CommonName: cn, Organization: orgs, OrganizationalUnit: ous}, DNSNames: dnsNames}
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return usagef("%s: --ip %q is not an IP address", cmd.CommandPath(), s)
				}
				req.IPs = append(req.IPs, ip)
			}
			s, err := hsm.OpenKey(f.key, f.options(e))
			if err != nil {
				return hsmError(cmd, err)
			}
			defer s.Close()
			der, err := hsm.CreateCSR(s, req)
			if err != nil {
				return hsmError(cmd, err)
			}
			return writeOut(e, out, hsm.EncodePEM("CERTIFICATE REQUEST", der), 0o644)
		},
	}
	f.register(c, "the key to certify", true)
	c.Flags().StringVar(&cn, "cn", "", "subject common name (required)")
	c.Flags().StringSliceVar(&orgs, "org", nil, "subject organization (repeatable)")
	c.Flags().StringSliceVar(&ous, "ou", nil, "subject organizational unit (repeatable): the Fabric role, orderer, peer, admin or client")
	c.Flags().StringSliceVar(&dnsNames, "dns", nil, "DNS subject alternative name (repeatable)")
	c.Flags().StringSliceVar(&ips, "ip", nil, "IP subject alternative name (repeatable)")
	c.Flags().StringVar(&out, "out", "-", "output file ('-' = stdout)")
	return c
}

func newHSMSelftestCmd(e *env) *cobra.Command {
	var f keyFlags
	c := &cobra.Command{
		Use:   "selftest --key URI",
		Short: "Sign and verify with the key (checks module, token, PIN, key and low-S DER signatures)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(cmd); err != nil {
				return err
			}
			s, err := hsm.OpenKey(f.key, f.options(e))
			if err != nil {
				return hsmError(cmd, err)
			}
			defer s.Close()
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			if err := hsm.SelfTest(ctx, s); err != nil {
				return hsmError(cmd, err)
			}
			fmt.Fprintln(e.stdout, "selftest ok: ECDSA P-256 sign + verify (DER, low-S)")
			return nil
		},
	}
	f.register(c, "the key to test", true)
	return c
}

// writeOut writes data to path, or to stdout when path is "" or "-".
func writeOut(e *env, path string, data []byte, mode os.FileMode) error {
	if path == "" || path == "-" {
		_, err := e.stdout.Write(data)
		return err
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

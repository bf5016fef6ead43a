package app

import (
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/memberd/memberd/hsm"
)

func newCACmd(e *env) *cobra.Command {
	c := &cobra.Command{
		Use:   "ca",
		Short: "Small member CA: init, sign",
		Long: `A small certificate authority for a member (demo and small members).

The CA key lives in the HSM (--key pkcs11:...) or, for development only,
in a PEM file (--key file:/path --insecure-file-key). 'ca init' writes the
self-signed CA certificate; 'ca sign' turns a CSR into a leaf certificate
for TLS client+server authentication and digital signatures, written leaf
first then the CA certificate, ready for the identity folder.`,
	}
	c.AddCommand(newCAInitCmd(e), newCASignCmd(e))
	return c
}

func newCAInitCmd(e *env) *cobra.Command {
	var (
		f        keyFlags
		cn, out  string
		orgs     []string
		days     int
		generate bool
	)
	c := &cobra.Command{
		Use:   "init --key URI|file:PATH --cn NAME --out ca.pem [--generate-key] [--days 3650]",
		Short: "Create the member CA certificate (self-signed) for a key in the HSM",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(cmd); err != nil {
				return err
			}
			if cn == "" {
				return usagef("%s: --cn is required (e.g. \"Member A CA\")", cmd.CommandPath())
			}
			if out == "" {
				return usagef("%s: --out is required (where to write the CA certificate)", cmd.CommandPath())
			}
			if days <= 0 {
				return usagef("%s: --days must be positive", cmd.CommandPath())
			}
			if _, err := os.Stat(out); err == nil {
				return fmt.Errorf("%s: %s exists; remove it or choose another --out (a CA is created once)", cmd.CommandPath(), out)
			}
			opts := f.options(e)
			var (
				s   hsm.Signer
				err error
			)
			switch {
			case generate && strings.HasPrefix(f.key, "file:"):
				fmt.Fprintf(e.stderr, "WARNING: creating an INSECURE CA key in file %s (development only)\n", strings.TrimPrefix(f.key, "file:"))
				s, err = hsm.GenerateSoftKey(strings.TrimPrefix(f.key, "file:"), &hsm.SoftOptions{AllowInsecure: f.insecureFile, Warnings: e.stderr, Logger: e.log})
			case generate:
				var ki *hsm.KeyInfo
				if ki, err = hsm.GenerateKey(f.key, opts); err == nil {
					fmt.Fprintf(e.stderr, "generated CA key in the HSM: %s\n", ki.URI)
					s, err = hsm.OpenKey(ki.URI, opts)
				}
			default:
				s, err = hsm.OpenKey(f.key, opts)
			}
			if err != nil {
				if errors.Is(err, hsm.ErrKeyNotFound) && !generate {
					err = fmt.Errorf("%w (add --generate-key to create it)", err)
				}
				return hsmError(cmd, err)
			}
			defer s.Close()
			ca, err := hsm.NewCACertificate(s, hsm.CAConfig{Subject: pkix.Name{CommonName: cn, Organization: orgs},
				Validity: time.Duration(days) * 24 * time.Hour, Now: time.Now()})
			if err != nil {
				return hsmError(cmd, err)
			}
			if err := writeOut(e, out, hsm.EncodePEM("CERTIFICATE", ca.Raw), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "CA %q created: %s (valid until %s)\n", cn, out, ca.NotAfter.UTC().Format(time.DateOnly))
			return nil
		},
	}
	f.register(c, "the CA key", true)
	c.Flags().StringVar(&cn, "cn", "", "CA common name (required)")
	c.Flags().StringSliceVar(&orgs, "org", nil, "CA organization (repeatable)")
	c.Flags().StringVar(&out, "out", "", "where to write the CA certificate (PEM, required)")
	c.Flags().IntVar(&days, "days", 3650, "validity in days")
	c.Flags().BoolVar(&generate, "generate-key", false, "generate the CA key first (in the HSM, or in the file with --insecure-file-key)")
	return c
}

func newCASignCmd(e *env) *cobra.Command {
	var (
		f                  keyFlags
		caPath, csrPath, o string
		days               int
	)
	c := &cobra.Command{
		Use:   "sign --key URI|file:PATH --ca-cert ca.pem --csr csr.pem [--out cert.pem] [--days 365]",
		Short: "Issue a leaf certificate from a CSR (TLS client+server, digital signature)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := f.check(cmd); err != nil {
				return err
			}
			if caPath == "" || csrPath == "" {
				return usagef("%s: --ca-cert and --csr are required", cmd.CommandPath())
			}
			if days <= 0 {
				return usagef("%s: --days must be positive", cmd.CommandPath())
			}
			caPEM, err := os.ReadFile(caPath)
			if err != nil {
				return fmt.Errorf("%s: reading --ca-cert: %w", cmd.CommandPath(), err)
			}
			cas, err := hsm.ParseCertificatesPEM(caPEM)
			if err != nil {
				return &UsageError{Err: fmt.Errorf("%s: --ca-cert %s: %w", cmd.CommandPath(), caPath, err)}
			}
			csrPEM, err := os.ReadFile(csrPath)
			if err != nil {
				return fmt.Errorf("%s: reading --csr: %w", cmd.CommandPath(), err)
			}
			csr, err := hsm.ParseCSRPEM(csrPEM)
			if err != nil {
				return &UsageError{Err: fmt.Errorf("%s: --csr %s: %w", cmd.CommandPath(), csrPath, err)}
			}
			s, err := hsm.OpenKey(f.key, f.options(e))
			if err != nil {
				return hsmError(cmd, err)
			}
			defer s.Close()
			leaf, err := hsm.SignCSR(cas[0], s, csr, hsm.LeafConfig{Validity: time.Duration(days) * 24 * time.Hour, Now: time.Now()})
			if err != nil {
				return hsmError(cmd, err)
			}
			chain := [][]byte{leaf.Raw}
			for _, c := range cas {
				chain = append(chain, c.Raw)
			}
			if err := writeOut(e, o, hsm.EncodePEM("CERTIFICATE", chain...), 0o644); err != nil {
				return err
			}
			if o != "" && o != "-" {
				fmt.Fprintf(e.stdout, "issued %q (serial %x) valid until %s: %s\n", leaf.Subject.CommonName, leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.DateOnly), o)
			}
			return nil
		},
	}
	f.register(c, "the CA key", true)
	c.Flags().StringVar(&caPath, "ca-cert", "", "the CA certificate (PEM) from 'memberd ca init' (required)")
	c.Flags().StringVar(&csrPath, "csr", "", "the CSR (PEM) to sign, e.g. from 'memberd hsm csr' (required)")
	c.Flags().StringVar(&o, "out", "-", "where to write leaf + CA certificate (PEM; '-' = stdout)")
	c.Flags().IntVar(&days, "days", 365, "validity in days (never beyond the CA's)")
	return c
}

package hsm_test

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/memberd/memberd/hsm"
)

func TestParseURI(t *testing.T) {
	one := uint(1)
	tests := []struct {
		name string
		in   string
		want *hsm.URI
		err  bool
	}{
		{name: "full", in: "pkcs11:token=member-a;object=tls;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/memberd/pin",
			want: &hsm.URI{Token: "member-a", Object: "tls", ID: []byte{1, 2}, ModulePath: "/usr/lib/softhsm/libsofthsm2.so", PINSource: "file:/etc/memberd/pin"}},
		{name: "empty", in: "pkcs11:", want: &hsm.URI{}},
		{name: "scheme case", in: "PKCS11:token=a", want: &hsm.URI{Token: "a"}},
		{name: "rfc example", in: "pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=",
			want: &hsm.URI{Token: "The Software PKCS#11 Softtoken", Manufacturer: "Snake Oil, Inc.", Model: "1.0", Object: "my-certificate", Type: "cert", ID: []byte{0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91}}},
		{name: "slot-id", in: "pkcs11:slot-id=1", want: &hsm.URI{SlotID: &one}},
		{name: "vendor attr", in: "pkcs11:x-vendor=v;token=t", want: &hsm.URI{Token: "t", Extra: map[string]string{"x-vendor": "v"}}},
		{name: "unknown query kept", in: "pkcs11:token=t?foo=bar", want: &hsm.URI{Token: "t", Extra: map[string]string{"?foo": "bar"}}},
		{name: "pin-value parsed", in: "pkcs11:token=t?pin-value=1234", want: &hsm.URI{Token: "t", PINValue: "1234"}},
		{name: "equals in value", in: "pkcs11:object=a=b", want: &hsm.URI{Object: "a=b"}},
		{name: "wrong scheme", in: "file:/x", err: true},
		{name: "no equals", in: "pkcs11:token", err: true},
		{name: "duplicate", in: "pkcs11:token=a;token=b", err: true},
		{name: "duplicate query", in: "pkcs11:?pin-source=a&pin-source=b", err: true},
		{name: "unknown path attr", in: "pkcs11:color=red", err: true},
		{name: "bad escape", in: "pkcs11:token=%zz", err: true},
		{name: "truncated escape", in: "pkcs11:token=%4", err: true},
		{name: "space", in: "pkcs11:token=a b", err: true},
		{name: "slash in path", in: "pkcs11:object=a/b", err: true},
		{name: "bad type", in: "pkcs11:type=blob", err: true},
		{name: "bad slot", in: "pkcs11:slot-id=x", err: true},
		{name: "empty name", in: "pkcs11:=x", err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := hsm.ParseURI(tc.in)
			if tc.err {
				if !errors.Is(err, hsm.ErrBadURI) {
					t.Fatalf("ParseURI(%q) = %+v, %v; want ErrBadURI", tc.in, got, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseURI(%q): %v", tc.in, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("ParseURI(%q) =\n %+v\nwant\n %+v", tc.in, got, tc.want)
			}
			back, err := hsm.ParseURI(got.String())
			if err != nil || !reflect.DeepEqual(back, got) {
				t.Fatalf("round trip via %q: %+v, %v", got.String(), back, err)
			}
		})
	}
}

func TestURIRedacted(t *testing.T) {
	u, err := hsm.ParseURI("pkcs11:token=t?pin-value=s3cret&module-path=/m.so")
	if err != nil {
		t.Fatal(err)
	}
	if r := u.Redacted(); bytes.Contains([]byte(r), []byte("s3cret")) {
		t.Fatalf("Redacted() leaks the PIN: %s", r)
	}
	_, err = hsm.ParseURI("pkcs11:token=t;bogus=1?pin-value=s3cret")
	if err == nil || bytes.Contains([]byte(err.Error()), []byte("s3cret")) {
		t.Fatalf("error leaks the PIN or is nil: %v", err)
	}
}

func FuzzParseURI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=member-a;object=tls;id=%01?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/p",
		"pkcs11:", "pkcs11:token=a%20b;type=private", "pkcs11:slot-id=3;x-y=%ff?z=1&pin-value=1",
		"pkcs11:token=%", "pkcs11:object=a=b;id=", "pkcs11:?module-name=softhsm2",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := hsm.ParseURI(s)
		if err != nil {
			if !errors.Is(err, hsm.ErrBadURI) {
				t.Fatalf("error does not wrap ErrBadURI: %v", err)
			}
			return
		}
		out := u.String()
		back, err := hsm.ParseURI(out)
		if err != nil {
			t.Fatalf("String() of %q = %q does not parse: %v", s, out, err)
		}
		if !reflect.DeepEqual(back, u) {
			t.Fatalf("round trip of %q via %q: %+v != %+v", s, out, back, u)
		}
		if !reflect.DeepEqual(u.Clone(), u) {
			t.Fatalf("Clone differs")
		}
	})
}

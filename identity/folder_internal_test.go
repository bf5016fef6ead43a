package identity

import (
	"reflect"
	"testing"
)

func TestParseIdentityFile(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"key", "key: pkcs11:token=a;object=b\n", []string{"pkcs11:token=a;object=b"}},
		{"keys", "keys:\n  - pkcs11:object=a\n  - pkcs11:object=b\n", []string{"pkcs11:object=a", "pkcs11:object=b"}},
		{"both", "key: k0\nkeys: [k1]\n", []string{"k0", "k1"}},
		{"empty", "", nil},
		{"unknown field", "keyz: x\n", nil},
		{"empty entry", "keys: ['']\n", nil},
		{"not yaml", "keys: [\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseIdentityFile([]byte(tc.in))
			if tc.want == nil {
				if err == nil {
					t.Fatalf("accepted: %v", got)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func FuzzParseIdentityFile(f *testing.F) {
	f.Add([]byte("key: pkcs11:token=a;object=b\n"))
	f.Add([]byte("keys:\n  - pkcs11:object=a\n  - file:/k.pem\n"))
	f.Add([]byte("keys: &a [*a]\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		uris, err := parseIdentityFile(b)
		if err == nil && len(uris) == 0 {
			t.Fatal("no error and no keys")
		}
	})
}

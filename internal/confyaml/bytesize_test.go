package confyaml

import "testing"

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"4194304": 4 << 20, "4MiB": 4 << 20, "4 mib": 4 << 20, "512KiB": 512 << 10,
		"1GiB": 1 << 30, "4MB": 4000000, "2k": 2048, "0": 0} {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "4 megs", "-1", "1.5MiB", "MiB", "99999999999999999999", "20000000000GiB"} {
		if got, err := ParseByteSize(in); err == nil {
			t.Errorf("ParseByteSize(%q) = %d, want an error", in, got)
		}
	}
}

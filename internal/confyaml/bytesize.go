package confyaml

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// byteSizeWant says what a ByteSize accepts, for a user.
const byteSizeWant = "a size like 4MiB, 512KiB or 4194304 (bytes)"

// ByteSize is a size in bytes in a config file: a whole number of bytes,
// or with a unit: 4MiB, 512KiB, 1GiB (powers of 1024) or 4MB, 1GB (powers
// of 1000); spaces and case do not matter ("4 mib").
type ByteSize uint64

var sizeUnits = map[string]uint64{"": 1, "b": 1, "k": 1 << 10, "kb": 1000, "kib": 1 << 10, "m": 1 << 20, "mb": 1000 * 1000, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1000 * 1000 * 1000, "gib": 1 << 30}

var sizeRE = regexp.MustCompile(`^\s*(\d+)\s*([a-zA-Z]*)\s*$`)

// ParseByteSize parses a ByteSize.
func ParseByteSize(s string) (ByteSize, error) {
	m := sizeRE.FindStringSubmatch(s)
	if m == nil {
		return 0, errors.New("not a size")
	}
	mult, ok := sizeUnits[strings.ToLower(m[2])]
	if !ok {
		return 0, fmt.Errorf("unknown unit %q", m[2])
	}
	n, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil || n > (1<<63)/mult {
		return 0, errors.New("too large")
	}
	return ByteSize(n * mult), nil
}

// UnmarshalYAML accepts a whole number or a size with a unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return fmt.Errorf("line %d: want %s, got %q", n.Line, byteSizeWant, n.Value)
	}
	*b = v
	return nil
}

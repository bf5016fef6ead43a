package appliance

import (
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/memberd/memberd/internal/confyaml"
	"github.com/memberd/memberd/internal/usage"
)

// memberd.yaml is read here; Config documents it.

// LoadConfig reads and validates memberd.yaml. Every error is a
// usage error naming the file and the key at fault.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usage.Errorf("appliance config: %v", err)
	}
	c, err := ParseConfig(b, filepath.Dir(path))
	if err != nil {
		return nil, usage.Errorf("appliance config %s: %v", path, err)
	}
	return c, nil
}

// ParseConfig decodes, applies defaults and validates; dir resolves
// relative paths.
func ParseConfig(b []byte, dir string) (*Config, error) {
	var c Config
	if err := confyaml.Decode(b, &c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("file is empty: member, identity and policy are required")
		}
		return nil, err
	}
	c = c.WithDefaults()
	c.Dir = dir
	return &c, c.Validate()
}

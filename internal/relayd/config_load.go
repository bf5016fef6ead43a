package relayd

import (
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/confyaml"
	"github.com/memberd/memberd/internal/usage"
)

// relay.yaml is read here; Config documents it.

// LoadConfig reads and validates relay.yaml. Every error is a
// usage error naming the file and the key at fault.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usage.Errorf("relay config: %v", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return nil, usage.Errorf("relay config %s: %v", path, err)
	}
	c.Dir = filepath.Dir(path)
	return c, nil
}

// ParseConfig decodes and validates; errors name the key at fault.
func ParseConfig(b []byte) (*Config, error) {
	var c Config
	if err := confyaml.Decode(b, &c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("file is empty: at least id, certificate, key and policy are required")
		}
		return nil, err
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Admin == "" {
		c.Admin = admin.DefaultAddr
	}
	return &c, c.Validate()
}

package app

import (
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/memberd/memberd/internal/appliance"
)

// memberd.yaml is documented on appliance.Config; this file decodes it.

// loadRunConfig reads and validates memberd.yaml. Every error is a
// UsageError naming the file and the key at fault.
func loadRunConfig(path string) (*appliance.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("appliance config: %v", err)
	}
	c, err := parseRunConfig(b, filepath.Dir(path))
	if err != nil {
		return nil, usagef("appliance config %s: %v", path, err)
	}
	return c, nil
}

// parseRunConfig decodes, applies defaults and validates; dir resolves
// relative paths.
func parseRunConfig(b []byte, dir string) (*appliance.Config, error) {
	var c appliance.Config
	if err := decodeConfig(b, &c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("file is empty: member, identity and policy are required")
		}
		return nil, err
	}
	c = c.WithDefaults()
	c.Dir = dir
	return &c, c.Validate()
}

package app

import (
	"errors"
	"io"
	"os"
	"path/filepath"

	"github.com/memberd/memberd/internal/admin"
	"github.com/memberd/memberd/internal/relayd"
)

// relay.yaml is documented on relayd.Config; this file decodes it.

// loadRelayConfig reads and validates relay.yaml. Every error is a
// UsageError naming the file and the key at fault.
func loadRelayConfig(path string) (*relayd.Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("relay config: %v", err)
	}
	c, err := parseRelayConfig(b)
	if err != nil {
		return nil, usagef("relay config %s: %v", path, err)
	}
	c.Dir = filepath.Dir(path)
	return c, nil
}

// parseRelayConfig decodes and validates; errors name the key at fault.
func parseRelayConfig(b []byte) (*relayd.Config, error) {
	var c relayd.Config
	if err := decodeConfig(b, &c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("file is empty: at least id, certificate, key and policy are required")
		}
		return nil, err
	}
	if c.Listen == "" {
		c.Listen = relayd.DefaultListen
	}
	if c.Admin == "" {
		c.Admin = admin.DefaultAddr
	}
	return &c, c.Validate()
}

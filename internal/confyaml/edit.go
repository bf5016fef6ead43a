package confyaml

import (
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"
)

// EditFile rewrites a YAML file through fn, as a user editing it would: the
// document as a generic map, written back with mode 0644. Comments and key
// order are not kept. For the demo story and tests, not for files an
// appliance reads while running (the write is not atomic).
func EditFile(path string, fn func(map[string]any)) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	m := map[string]any{}
	if err := yaml.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fn(m)
	out, err := yaml.Marshal(m)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, out, 0o644)
}

// Package fsync makes changes to a folder durable.
package fsync

import "os"

// Dir fsyncs the folder dir, so that files created, renamed or removed in
// it survive a crash. Call it after the rename that publishes a file.
func Dir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

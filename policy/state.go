package policy

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/memberd/memberd/internal/fsync"
)

// StateFile is the name of the file in the state folder that holds the last
// applied bundle (its version and hash are the anti-rollback floor).
const StateFile = "applied.policy"

const stateTempPrefix = "." + StateFile + ".tmp-"

// SaveState persists p as the applied policy in dir, atomically: write a
// temporary file, fsync it, rename it over StateFile, fsync the folder. A
// crash at any point leaves either the old or the new state.
func SaveState(dir string, p *Policy) error {
	return writeFileAtomic(dir, StateFile, p.Marshal())
}

// LoadState returns the applied policy saved in dir, or (nil, nil) when dir
// holds none. Temporary files left by a crash during SaveState are removed.
func LoadState(dir string) (*Policy, error) {
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), stateTempPrefix) {
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	path := filepath.Join(dir, StateFile)
	data, err := readFileLimited(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("policy state %s: %w", path, err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("policy state %s is unreadable (%w); it is the anti-rollback record: restore it from a backup, or remove it only if you trust every file in the policy folder", path, err)
	}
	return p, nil
}

func writeFileAtomic(dir, name string, data []byte) (err error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp-")
	if err != nil {
		return fmt.Errorf("writing %s in %s: %w", name, dir, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		return fmt.Errorf("writing %s in %s: %w", name, dir, err)
	}
	if err := fsync.Dir(dir); err != nil {
		return fmt.Errorf("syncing folder %s: %w", dir, err)
	}
	return nil
}

// readFileLimited reads a regular file (following symlinks) of at most
// MaxBundleSize bytes, checking the size before reading.
func readFileLimited(path string) ([]byte, error) {
	// Check the type first and open non-blocking: opening a FIFO someone
	// dropped into the folder must not hang the reader.
	if st, err := os.Stat(path); err != nil {
		return nil, err
	} else if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrMalformed, path)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s is not a regular file", ErrMalformed, path)
	}
	if st.Size() > MaxBundleSize {
		return nil, fmt.Errorf("%w: %s has %d bytes, the limit is %d", ErrTooLarge, path, st.Size(), MaxBundleSize)
	}
	buf := make([]byte, st.Size()+1)
	n, err := io.ReadFull(f, buf)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	if int64(n) > st.Size() {
		return nil, fmt.Errorf("%w: %s changed while being read", ErrMalformed, path)
	}
	return buf[:n], nil
}

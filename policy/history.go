package policy

// The history of applied versions: every bundle the watcher applies is
// also kept in the state folder, under history/, one file per version
// (v<version>-<hash prefix>.policy, the bundle with its signatures), so
// that 'memberd policy log' lists who signed each version in force since
// the appliance started, and so that it survives restarts. It is an audit
// record: the anti-rollback floor is StateFile alone, and a history file
// that cannot be written is logged, not a reason to refuse a version.

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// HistoryDir is the folder of the state folder that keeps applied versions.
const HistoryDir = "history"

// MaxHistory bounds the versions kept in the history folder: the oldest
// are removed beyond it.
const MaxHistory = 1000

// Applied is one version of the history.
type Applied struct {
	Policy *Policy
	// At is when this appliance applied it (the file's modification time).
	At time.Time
}

func historyName(p *Policy) string {
	return fmt.Sprintf("v%08d-%s.policy", p.Version(), strings.TrimPrefix(p.Hash().String(), "sha256:")[:16])
}

// SaveHistory adds p to the history of state folder dir (atomically; a
// version already there is left as it is) and removes the oldest entries
// beyond MaxHistory.
func SaveHistory(dir string, p *Policy) error {
	hdir := filepath.Join(dir, HistoryDir)
	if err := os.MkdirAll(hdir, 0o700); err != nil {
		return fmt.Errorf("policy history: %w", err)
	}
	if _, err := os.Stat(filepath.Join(hdir, historyName(p))); err == nil {
		return nil
	}
	if err := writeFileAtomic(hdir, historyName(p), p.Marshal()); err != nil {
		return fmt.Errorf("policy history: %w", err)
	}
	names, err := historyNames(hdir)
	if err != nil {
		return err
	}
	for len(names) > MaxHistory {
		_ = os.Remove(filepath.Join(hdir, names[0]))
		names = names[1:]
	}
	return nil
}

func historyNames(hdir string) ([]string, error) {
	ents, err := os.ReadDir(hdir)
	if err != nil {
		return nil, fmt.Errorf("policy history: %w", err)
	}
	var names []string
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, "v") && strings.HasSuffix(n, ".policy") && e.Type().IsRegular() {
			names = append(names, n)
		}
	}
	slices.Sort(names) // fixed-width versions: name order is version order
	return names, nil
}

// LoadHistory returns the history of state folder dir, oldest first. A file
// that does not parse is reported in bad (by name and reason) and skipped.
// A state folder without history gives none (and no error).
func LoadHistory(dir string) (out []Applied, bad []error, err error) {
	hdir := filepath.Join(dir, HistoryDir)
	names, err := historyNames(hdir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	for _, n := range names {
		path := filepath.Join(hdir, n)
		data, err := readFileLimited(path)
		var p *Policy
		if err == nil {
			p, err = Parse(data)
		}
		if err != nil {
			bad = append(bad, fmt.Errorf("%s: %w", path, err))
			continue
		}
		var at time.Time
		if st, err := os.Stat(path); err == nil {
			at = st.ModTime()
		}
		out = append(out, Applied{Policy: p, At: at})
	}
	slices.SortStableFunc(out, func(a, b Applied) int { return cmp.Compare(a.Policy.Version(), b.Policy.Version()) })
	return out, bad, nil
}

// FindHistory returns the version with hash h from the history of state
// folder dir, or nil when the history does not hold it.
func FindHistory(dir string, h Hash) (*Policy, error) {
	hdir := filepath.Join(dir, HistoryDir)
	names, err := historyNames(hdir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	suffix := "-" + strings.TrimPrefix(h.String(), "sha256:")[:16] + ".policy"
	for _, n := range names {
		if !strings.HasSuffix(n, suffix) {
			continue
		}
		data, err := readFileLimited(filepath.Join(hdir, n))
		if err != nil {
			return nil, fmt.Errorf("policy history: %w", err)
		}
		p, err := Parse(data)
		if err != nil {
			return nil, fmt.Errorf("policy history %s: %w", n, err)
		}
		if p.Hash() == h {
			return p, nil
		}
	}
	return nil, nil
}

package app

// Policy push: 'memberd policy push BUNDLE' hands a signed bundle to the
// local appliance (POST /push on its admin endpoint); the appliance writes
// it into its own policy folder and sends it through the tunnel to the push
// service of every other member of its current policy, which writes it into
// that member's policy folder. Nobody on the way verifies signatures: each
// member's policy watcher does, and applies or rejects it (and says why).
//
// Wire format on the overlay push port (TCP inside the tunnel, version 1):
//
//	pusher → member: "MDPUSH1\n", then uint32 big-endian length N
//	                 (1..policy.MaxBundleSize), then N bytes of bundle
//	member → pusher: one line, "ok <file name>\n" or "error <reason>\n"
//
// The member parses the bundle only for its form (to name the file by its
// version and hash); it writes it atomically (hidden temp file, fsync,
// rename) so that the watcher never reads half a file. Who may push is
// the policy ACL: members allowed to reach the push port.

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/memberd/memberd/policy"
	"github.com/memberd/memberd/tunnel"
)

const pushMagic = "MDPUSH1\n"

// pushTimeout bounds one push exchange with one member.
const pushTimeout = 20 * time.Second

// errPush marks a malformed push.
var errPush = errors.New("policy push")

// readPush reads one push request: magic, length, bundle.
func readPush(r io.Reader) ([]byte, error) {
	var hdr [len(pushMagic) + 4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: reading the header: %v", errPush, err)
	}
	if string(hdr[:len(pushMagic)]) != pushMagic {
		return nil, fmt.Errorf("%w: not a memberd policy push (version 1)", errPush)
	}
	n := binary.BigEndian.Uint32(hdr[len(pushMagic):])
	if n == 0 || n > policy.MaxBundleSize {
		return nil, fmt.Errorf("%w: bundle length %d out of range 1..%d", errPush, n, policy.MaxBundleSize)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: reading %d bundle bytes: %v", errPush, n, err)
	}
	return b, nil
}

// writePush writes one push request.
func writePush(w io.Writer, bundle []byte) error {
	if len(bundle) == 0 || len(bundle) > policy.MaxBundleSize {
		return fmt.Errorf("%w: bundle of %d bytes (allowed 1..%d)", errPush, len(bundle), policy.MaxBundleSize)
	}
	b := make([]byte, 0, len(pushMagic)+4+len(bundle))
	b = append(b, pushMagic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(bundle)))
	b = append(b, bundle...)
	_, err := w.Write(b)
	return err
}

// storeBundle checks the bundle's form and writes it atomically into dir as
// pushed-v<version>-<hash prefix>.yaml. It returns the file name.
func storeBundle(dir string, bundle []byte) (string, error) {
	p, err := policy.Parse(bundle)
	if err != nil {
		return "", fmt.Errorf("not a policy bundle: %w", err)
	}
	name := fmt.Sprintf("pushed-v%06d-%s.yaml", p.Version(), strings.TrimPrefix(p.Hash().String(), "sha256:")[:16])
	final := filepath.Join(dir, name)
	if old, err := os.ReadFile(final); err == nil && string(old) == string(bundle) {
		return name, nil // already delivered
	}
	f, err := os.CreateTemp(dir, ".push-*.tmp")
	if err != nil {
		return "", fmt.Errorf("policy folder %s: %w", dir, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(bundle); err != nil {
		f.Close()
		return "", fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return "", err
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return "", fmt.Errorf("policy folder %s: %w", dir, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return name, nil
}

// servePush accepts pushes on ln until ctx ends or ln closes.
func servePush(ctx context.Context, ln *tunnel.Listener, dir string, log *slog.Logger) {
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.AcceptConn()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			defer func() { // a bug a member's push reaches ends that push only
				if v := recover(); v != nil {
					log.Error("panic serving a policy push; closed that connection only", "from", c.Member(),
						"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				}
			}()
			_ = c.SetDeadline(time.Now().Add(pushTimeout))
			b, err := readPush(bufio.NewReader(c))
			var name string
			if err == nil {
				name, err = storeBundle(dir, b)
			}
			if err != nil {
				log.Warn("policy push refused", "from", c.Member(), "err", err)
				fmt.Fprintf(c, "error %s\n", oneLine(err.Error()))
				return
			}
			log.Info("policy bundle pushed into the policy folder (the watcher verifies it)", "from", c.Member(), "file", name)
			fmt.Fprintf(c, "ok %s\n", name)
		}()
	}
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// pushTo sends bundle to member's push service through the tunnel and
// returns its answer.
func pushTo(ctx context.Context, dev *tunnel.Device, member string, port uint16, bundle []byte) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, pushTimeout)
	defer cancel()
	c, err := dev.Dial(ctx, member, port)
	if err != nil {
		return "", fmt.Errorf("dialling %s:%d through the tunnel: %w", member, port, err)
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetDeadline(dl)
	if err := writePush(c, bundle); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(io.LimitReader(c, 4096)).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no answer from %s: %w", member, err)
	}
	line = strings.TrimSuffix(line, "\n")
	if rest, ok := strings.CutPrefix(line, "ok "); ok {
		return rest, nil
	}
	return "", fmt.Errorf("%s refused: %s", member, strings.TrimPrefix(line, "error "))
}

// pushResult is one member's outcome in the POST /push answer.
type pushResult struct {
	Member string `json:"member"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// pushHandler serves POST /push on the admin endpoint: store the bundle
// locally, then push it to every other member of the current policy.
func pushHandler(a *appliance, dir string, port uint16, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST a signed policy bundle", http.StatusMethodNotAllowed)
			return
		}
		b, err := io.ReadAll(io.LimitReader(r.Body, policy.MaxBundleSize+1))
		if err != nil || len(b) == 0 || len(b) > policy.MaxBundleSize {
			http.Error(w, fmt.Sprintf("want a bundle of 1..%d bytes", policy.MaxBundleSize), http.StatusBadRequest)
			return
		}
		if _, err := policy.Parse(b); err != nil {
			http.Error(w, "not a policy bundle: "+err.Error(), http.StatusBadRequest)
			return
		}
		// The other members first, this one last: once this appliance
		// applies a version that removes a member, its tunnel cuts that
		// member off, and the push to it would race with the cut.
		var results []pushResult
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, m := range a.policy().Members() {
			if m.ID == a.member {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := pushTo(r.Context(), a.dev, m.ID, port, b)
				pr := pushResult{Member: m.ID, OK: err == nil, Detail: res}
				if err != nil {
					pr.Detail = err.Error()
				}
				mu.Lock()
				results = append(results, pr)
				mu.Unlock()
			}()
		}
		wg.Wait()
		name, err := storeBundle(dir, b)
		local := pushResult{Member: a.member, OK: err == nil, Detail: "local policy folder: " + name}
		if err != nil {
			local.Detail = err.Error()
		}
		results = append([]pushResult{local}, results...)
		status := http.StatusOK
		for _, pr := range results {
			if !pr.OK {
				status = http.StatusBadGateway
			}
		}
		log.Info("policy push", "file", name, "results", len(results), "status", status)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"results": results})
	})
}

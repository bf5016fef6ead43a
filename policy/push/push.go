// Package push is the MDPUSH1 policy push protocol: how a signed policy
// bundle travels from one member to another member's policy folder.
//
// 'memberd policy push BUNDLE' hands a signed bundle to the local appliance
// (POST /push on its admin endpoint); the appliance writes it into its own
// policy folder and sends it through the tunnel to the push service of
// every other member of its current policy, which writes it into that
// member's policy folder. Nobody on the way verifies signatures: each
// member's policy watcher does, and applies or rejects it (and says why).
//
// Wire format on the overlay push port (TCP inside the tunnel, version 1):
//
//	pusher → member: "MDPUSH1\n", then uint32 big-endian length N
//	                 (1..policy.MaxBundleSize), then N bytes of bundle
//	member → pusher: one line, "ok <file name>[ <verdict>]\n" or "error <reason>\n"
//
// A member whose Serve has a Decider answers only once its policy watcher
// has decided about the stored file (at most AwaitVerdict): "ok <name>
// applied: version N", "ok <name> held: <reason>", "ok <name> stored; not
// decided within …", or "error stored as <name>, but refused: <reason>".
// A pusher that knows only "ok <name>" shows the verdict as part of the
// name, and a member without a Decider answers "ok <name>" alone: both
// directions stay compatible.
//
// The member parses the bundle only for its form (to name the file by its
// version and hash); it writes it atomically (hidden temp file, fsync,
// rename) so that the watcher never reads half a file. Who may push is
// the policy ACL: members allowed to reach the push port.
//
// The package does no dialling and owns no sockets: Serve takes a
// net.Listener, Exchange a connection the caller dialled.
package push

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/memberd/memberd/policy"
)

// Magic opens every push request (protocol version 1).
const Magic = "MDPUSH1\n"

// DefaultPort is the overlay port of the policy push service.
const DefaultPort = 7099

// Timeout bounds one push exchange with one member.
const Timeout = 20 * time.Second

// AwaitVerdict bounds how long Serve waits for the watcher's verdict
// before it answers (below Timeout, so the pusher hears it).
const AwaitVerdict = 10 * time.Second

// Decider is the member's policy watcher as Serve needs it
// (policy.Watcher implements it).
type Decider interface {
	Await(ctx context.Context, path string) (policy.Verdict, error)
}

// ErrNoAnswer: the bundle was sent but no answer came back (the member may
// well have it).
var ErrNoAnswer = errors.New("no answer")

// ErrPush marks a malformed push.
var ErrPush = errors.New("policy push")

// Result is one member's outcome of a push (the POST /push answer).
type Result struct {
	Member string `json:"member"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// ReadRequest reads one push request: magic, length, bundle. The length is
// checked before anything is allocated.
func ReadRequest(r io.Reader) ([]byte, error) {
	var hdr [len(Magic) + 4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("%w: reading the header: %v", ErrPush, err)
	}
	if string(hdr[:len(Magic)]) != Magic {
		return nil, fmt.Errorf("%w: not a memberd policy push (version 1)", ErrPush)
	}
	n := binary.BigEndian.Uint32(hdr[len(Magic):])
	if n == 0 || n > policy.MaxBundleSize {
		return nil, fmt.Errorf("%w: bundle length %d out of range 1..%d", ErrPush, n, policy.MaxBundleSize)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("%w: reading %d bundle bytes: %v", ErrPush, n, err)
	}
	return b, nil
}

// WriteRequest writes one push request.
func WriteRequest(w io.Writer, bundle []byte) error {
	if len(bundle) == 0 || len(bundle) > policy.MaxBundleSize {
		return fmt.Errorf("%w: bundle of %d bytes (allowed 1..%d)", ErrPush, len(bundle), policy.MaxBundleSize)
	}
	b := make([]byte, 0, len(Magic)+4+len(bundle))
	b = append(b, Magic...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(bundle)))
	b = append(b, bundle...)
	_, err := w.Write(b)
	return err
}

// Store checks the bundle's form and writes it atomically into dir as
// pushed-v<version>-<hash prefix>.yaml. It returns the file name.
func Store(dir string, bundle []byte) (string, error) {
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

// memberConn is a connection that knows which member it comes from (as
// tunnel.Conn does); Serve names the pusher in its log with it.
type memberConn interface{ Member() string }

func connMember(c net.Conn) string {
	if m, ok := c.(memberConn); ok {
		return m.Member()
	}
	return ""
}

// Serve accepts pushes on ln and stores each into dir until ctx ends or
// ln closes; it closes ln when ctx ends and returns once every exchange
// has finished. With dec, each answer carries the watcher's verdict on the
// stored file. log and dec may be nil.
func Serve(ctx context.Context, ln net.Listener, dir string, dec Decider, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveConn(ctx, c, dir, dec, log)
		}()
	}
}

// serveConn handles one push exchange on c and closes it.
func serveConn(ctx context.Context, c net.Conn, dir string, dec Decider, log *slog.Logger) {
	defer c.Close()
	from := connMember(c)
	defer func() { // a bug a member's push reaches ends that push only
		if v := recover(); v != nil {
			log.Error("panic serving a policy push; closed that connection only", "from", from,
				"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	_ = c.SetDeadline(time.Now().Add(Timeout))
	b, err := ReadRequest(bufio.NewReader(c))
	var name string
	if err == nil {
		name, err = Store(dir, b)
	}
	if err != nil {
		log.Warn("policy push refused", "from", from, "err", err)
		fmt.Fprintf(c, "error %s\n", oneLine(err.Error()))
		return
	}
	log.Info("policy bundle pushed into the policy folder (the watcher verifies it)", "from", from, "file", name)
	if dec == nil {
		fmt.Fprintf(c, "ok %s\n", name)
		return
	}
	actx, cancel := context.WithTimeout(ctx, AwaitVerdict)
	defer cancel()
	v, err := dec.Await(actx, filepath.Join(dir, name))
	fmt.Fprintln(c, Answer(name, v, err))
}

// Answer is the answer line (without its newline) for a bundle stored as
// name, given the watcher's verdict (err: none within AwaitVerdict).
func Answer(name string, v policy.Verdict, err error) string {
	switch {
	case err != nil:
		return fmt.Sprintf("ok %s stored; not decided within %v (see 'memberd status' on that member)", name, AwaitVerdict)
	case v.State == policy.VerdictApplied:
		return fmt.Sprintf("ok %s applied: version %d", name, v.Version)
	case v.State == policy.VerdictHeld:
		return fmt.Sprintf("ok %s held: %s", name, oneLine(v.Reason))
	case v.State == policy.VerdictOlder:
		return fmt.Sprintf("ok %s not applied again: %s", name, oneLine(v.Reason))
	default:
		return fmt.Sprintf("error stored as %s, but refused by the member's policy watcher: %s", name, oneLine(v.Reason))
	}
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// Exchange sends bundle over c, a connection to member's push service, and
// returns its answer: the stored file name and the member's verdict on it
// (see Answer), or an error carrying the member's reason. The caller owns
// c and its deadline.
func Exchange(c io.ReadWriter, member string, bundle []byte) (string, error) {
	if err := WriteRequest(c, bundle); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(io.LimitReader(c, 4096)).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("%w from %s: %w", ErrNoAnswer, member, err)
	}
	return ParseAnswer(member, line)
}

// ParseAnswer reads one answer line of member (see Answer): what follows
// "ok ", or an error with the member's reason.
func ParseAnswer(member, line string) (string, error) {
	line = strings.TrimSuffix(line, "\n")
	if rest, ok := strings.CutPrefix(line, "ok "); ok {
		return rest, nil
	}
	return "", fmt.Errorf("%s refused: %s", member, strings.TrimPrefix(line, "error "))
}

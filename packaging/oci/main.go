// Command oci builds memberd's container image without a Docker daemon or a
// registry: one layer holding the memberd binary, the shared libraries it
// links (passed with -lib, found by packaging/image.sh with ldd), a passwd
// entry for the unprivileged user and the example configs, on an empty
// base. It writes a tarball that `docker load` and `podman load` read and
// that `crane push` can publish.
//
// It is a build tool with its own go.mod, like nfpm: memberd's go.mod does
// not depend on go-containerregistry.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// uid and gid of the memberd user inside the image (distroless "nonroot").
const uid, gid = 65532, 65532

type libs []string

func (l *libs) String() string     { return strings.Join(*l, ",") }
func (l *libs) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var (
		bin     = flag.String("binary", "", "memberd binary to put at /usr/bin/memberd (required)")
		etc     = flag.String("etc", "", "folder of example configs to put in /etc/memberd (optional)")
		out     = flag.String("out", "", "image tarball to write (required)")
		tag     = flag.String("tag", "memberd:dev", "image name:tag recorded in the tarball")
		version = flag.String("version", "dev", "version label")
		revison = flag.String("revision", "", "source revision label (git commit)")
		epoch   = flag.Int64("epoch", 0, "file and image timestamps, seconds since 1970 (reproducible builds; SOURCE_DATE_EPOCH)")
		arch    = flag.String("arch", "amd64", "image architecture")
		lib     libs
	)
	flag.Var(&lib, "lib", "shared library the binary needs, kept at its path (repeatable)")
	flag.Parse()
	if *bin == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := build(*bin, *etc, *out, *tag, *version, *revison, *arch, time.Unix(*epoch, 0).UTC(), lib); err != nil {
		fmt.Fprintln(os.Stderr, "oci:", err)
		os.Exit(1)
	}
}

func build(bin, etc, out, tag, version, revision, arch string, when time.Time, lib []string) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return fmt.Errorf("-tag %q: %w", tag, err)
	}
	layer, err := rootfs(bin, etc, when, lib)
	if err != nil {
		return err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layer)), nil })
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, l)
	if err != nil {
		return err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = arch, "linux"
	cf.Created = v1.Time{Time: when}
	cf.Config = v1.Config{
		Entrypoint: []string{"/usr/bin/memberd"},
		Cmd:        []string{"run", "--config", "/etc/memberd/memberd.yaml", "--log-format", "json"},
		User:       fmt.Sprintf("%d:%d", uid, gid),
		WorkingDir: "/var/lib/memberd",
		Env:        []string{"PATH=/usr/bin:/bin"},
		// relay: 443 UDP (QUIC) + TCP (TLS); ledger gRPC on the LAN side.
		ExposedPorts: map[string]struct{}{"443/udp": {}, "443/tcp": {}, "7050/tcp": {}},
		Volumes:      map[string]struct{}{"/var/lib/memberd": {}},
		Labels: map[string]string{
			"org.opencontainers.image.title":       "memberd",
			"org.opencontainers.image.description": "memberd appliance and relay: ledger node, HSM identity, WireGuard tunnel over one outbound port",
			"org.opencontainers.image.version":     version,
			"org.opencontainers.image.revision":    revision,
		},
		StopSignal: "SIGTERM",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return err
	}
	img, err = mutate.CreatedAt(img, v1.Time{Time: when})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// rootfs returns the layer: an uncompressed tar of the image's files.
func rootfs(bin, etc string, when time.Time, lib []string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	dir := func(p string, mode int64, owner int) error {
		if dirs[p] {
			return nil
		}
		dirs[p] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(p, "/") + "/", Mode: mode,
			Uid: owner, Gid: owner, ModTime: when, Format: tar.FormatPAX})
	}
	parents := func(p string) error {
		var chain []string
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			chain = append(chain, d)
		}
		for i := len(chain) - 1; i >= 0; i-- {
			if err := dir(chain[i], 0o755, 0); err != nil {
				return err
			}
		}
		return nil
	}
	file := func(p string, mode int64, data []byte) error {
		if err := parents(p); err != nil {
			return err
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(p, "/"), Mode: mode,
			Size: int64(len(data)), ModTime: when, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	raw, err := os.ReadFile(bin)
	if err != nil {
		return nil, fmt.Errorf("-binary: %w", err)
	}
	if err := file("/usr/bin/memberd", 0o755, raw); err != nil {
		return nil, err
	}
	sort.Strings(lib)
	for _, l := range lib {
		if !path.IsAbs(l) {
			return nil, fmt.Errorf("-lib %q: want an absolute path", l)
		}
		real, err := filepath.EvalSymlinks(l) // copy the file, keep the path the binary asks for
		if err != nil {
			return nil, fmt.Errorf("-lib: %w", err)
		}
		data, err := os.ReadFile(real)
		if err != nil {
			return nil, fmt.Errorf("-lib: %w", err)
		}
		if err := file(l, 0o755, data); err != nil {
			return nil, err
		}
	}
	if err := file("/etc/passwd", 0o644, fmt.Appendf(nil, "root:x:0:0:root:/root:/sbin/nologin\nmemberd:x:%d:%d:memberd:/var/lib/memberd:/sbin/nologin\n", uid, gid)); err != nil {
		return nil, err
	}
	if err := file("/etc/group", 0o644, fmt.Appendf(nil, "root:x:0:\nmemberd:x:%d:\n", gid)); err != nil {
		return nil, err
	}
	if etc != "" {
		ents, err := os.ReadDir(etc)
		if err != nil {
			return nil, fmt.Errorf("-etc: %w", err)
		}
		for _, e := range ents {
			if e.IsDir() {
				continue
			}
			data, err := os.ReadFile(filepath.Join(etc, e.Name()))
			if err != nil {
				return nil, err
			}
			if err := file("/etc/memberd/"+e.Name(), 0o644, data); err != nil {
				return nil, err
			}
		}
	}
	if err := dir("/tmp", 0o1777, 0); err != nil {
		return nil, err
	}
	if err := parents("/var/lib/memberd"); err != nil {
		return nil, err
	}
	if err := dir("/var/lib/memberd", 0o750, uid); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

//go:build vmimage

// Package vmimage checks the VM image that `make vm-image` builds
// (packaging/vm): what its disk holds, read without mounting it (sfdisk,
// debugfs, mtools), and that it boots with UEFI in QEMU without KVM to
// memberd.service waiting for its config. Run with `make vm-image-test`
// (build tag vmimage; MEMBERD_VM_IMAGE names the .raw disk). Without the
// image or the tools the tests skip, and fail under CI (internal/testenv).
package vmimage

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/memberd/memberd/internal/testenv"
)

// image returns the disk image under test.
func image(t *testing.T) string {
	t.Helper()
	p := os.Getenv("MEMBERD_VM_IMAGE")
	if p == "" {
		testenv.Missing(t, "MEMBERD_VM_IMAGE (the .raw disk)", "run make vm-image-test")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("MEMBERD_VM_IMAGE: %v", err)
	}
	return p
}

type partition struct {
	Start uint64 `json:"start"` // sectors of 512 bytes
	Size  uint64 `json:"size"`
	Type  string `json:"type"`
	Name  string `json:"name"`
}

// partitions reads the image's GPT with sfdisk.
func partitions(t *testing.T, img string) map[string]partition {
	t.Helper()
	testenv.Command(t, "sfdisk", "fdisk")
	out, err := exec.Command("sfdisk", "-J", img).Output()
	if err != nil {
		t.Fatalf("sfdisk -J %s: %v", img, err)
	}
	var doc struct {
		Table struct {
			Label      string      `json:"label"`
			Partitions []partition `json:"partitions"`
		} `json:"partitiontable"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatalf("sfdisk -J: %v\n%s", err, out)
	}
	if doc.Table.Label != "gpt" {
		t.Fatalf("partition table %q, want gpt", doc.Table.Label)
	}
	m := map[string]partition{}
	for _, p := range doc.Table.Partitions {
		m[p.Name] = p
	}
	return m
}

// run runs a command and returns its output, failing the test on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// rootFS reads files of the image's root partition with debugfs (no mount).
type rootFS struct {
	t   *testing.T
	dev string // image?offset=N (e2fsprogs' unix io option)
}

func (r rootFS) debugfs(req string) string {
	r.t.Helper()
	out := run(r.t, "debugfs", "-R", req, r.dev)
	// debugfs prints its banner and errors on stderr with exit 0.
	return out
}

func (r rootFS) cat(path string) string {
	r.t.Helper()
	out := r.debugfs("cat " + path)
	if strings.Contains(out, "File not found by ext2_lookup") {
		r.t.Fatalf("image: %s missing", path)
	}
	return out
}

// stat returns debugfs's inode description of path; fails if it is absent.
func (r rootFS) stat(path string) string {
	r.t.Helper()
	out := r.debugfs("stat " + path)
	if !strings.Contains(out, "Inode:") {
		r.t.Fatalf("image: %s missing: %s", path, out)
	}
	return out
}

func TestImageContents(t *testing.T) {
	img := image(t)
	parts := partitions(t, img)
	esp, ok := parts["esp"]
	if !ok || !strings.EqualFold(esp.Type, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B") {
		t.Fatalf("no EFI system partition named esp: %+v", parts)
	}
	rp, ok := parts["memberd-root"]
	if !ok || !strings.EqualFold(rp.Type, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709") {
		t.Fatalf("no root partition (type Linux root x86-64) named memberd-root: %+v", parts)
	}

	// The ESP: systemd-boot as the removable-media loader, one entry, kernel, initrd.
	testenv.Command(t, "mdir", "mtools")
	espDev := fmt.Sprintf("%s@@%d", img, esp.Start*512)
	os.Setenv("MTOOLS_SKIP_CHECK", "1")
	for _, f := range []string{"::/EFI/BOOT/BOOTX64.EFI", "::/memberd/vmlinuz", "::/memberd/initrd.img"} {
		run(t, "mdir", "-i", espDev, f)
	}
	entry := run(t, "mtype", "-i", espDev, "::/loader/entries/memberd.conf")
	for _, want := range []string{"linux   /memberd/vmlinuz", "initrd  /memberd/initrd.img", "root=LABEL=memberd-root", "console=ttyS0"} {
		if !strings.Contains(entry, want) {
			t.Errorf("loader entry lacks %q:\n%s", want, entry)
		}
	}
	if !strings.Contains(run(t, "mtype", "-i", espDev, "::/EFI/BOOT/BOOTX64.EFI"), "systemd-boot") {
		t.Errorf("EFI/BOOT/BOOTX64.EFI is not systemd-boot")
	}

	testenv.Command(t, "debugfs", "e2fsprogs")
	r := rootFS{t: t, dev: fmt.Sprintf("%s?offset=%d", img, rp.Start*512)}
	if lbl := run(t, "dumpe2fs", "-h", r.dev); !regexp.MustCompile(`(?m)^Filesystem volume name:\s+memberd-root$`).MatchString(lbl) {
		t.Errorf("root filesystem label is not memberd-root")
	}

	// The package, installed by dpkg (not just its files).
	status := r.cat("/var/lib/dpkg/status")
	if !regexp.MustCompile(`(?m)^Package: memberd\nStatus: install ok installed$`).MatchString(status) {
		t.Errorf("dpkg status: memberd is not 'install ok installed'")
	}
	if st := r.stat("/usr/bin/memberd"); !strings.Contains(st, "Mode:  0755") {
		t.Errorf("/usr/bin/memberd is not 0755:\n%s", st)
	}
	if r.stat("/usr/bin/memberd"); !strings.Contains(r.debugfs("stat /usr/bin/memberd"), "User:     0") {
		t.Errorf("/usr/bin/memberd is not owned by root")
	}
	unit := r.cat("/usr/lib/systemd/system/memberd.service")
	if !strings.Contains(unit, "ExecStart=/usr/bin/memberd run --config /etc/memberd/memberd.yaml") {
		t.Errorf("memberd.service in the image is not the packaged one:\n%s", unit)
	}
	r.stat("/usr/lib/systemd/system/memberd-relay.service")
	sysctl := r.cat("/usr/lib/sysctl.d/60-memberd.conf")
	for _, want := range []string{"net.core.rmem_max = 7500000", "net.core.wmem_max = 7500000"} {
		if !strings.Contains(sysctl, want) {
			t.Errorf("60-memberd.conf lacks %q", want)
		}
	}

	// The memberd system user and group, made by the package's postinstall.
	passwd := r.cat("/etc/passwd")
	m := regexp.MustCompile(`(?m)^memberd:x:(\d+):(\d+):[^:]*:/var/lib/memberd:/usr/sbin/nologin$`).FindStringSubmatch(passwd)
	if m == nil {
		t.Fatalf("no memberd user (home /var/lib/memberd, nologin) in /etc/passwd:\n%s", passwd)
	}
	if !regexp.MustCompile(`(?m)^memberd:x:` + m[2] + `:`).MatchString(r.cat("/etc/group")) {
		t.Errorf("no memberd group with gid %s", m[2])
	}

	// Enabled units and the first-boot step.
	for _, l := range []string{
		"/etc/systemd/system/multi-user.target.wants/memberd.service",
		"/etc/systemd/system/multi-user.target.wants/memberd-seed.service",
	} {
		if st := r.stat(l); !strings.Contains(st, "Type: symlink") {
			t.Errorf("%s is not a symlink (unit not enabled):\n%s", l, st)
		}
	}
	if st := r.stat("/etc/systemd/system/systemd-firstboot.service"); !strings.Contains(st, "/dev/null") {
		t.Errorf("systemd-firstboot.service is not masked (it would prompt on the console):\n%s", st)
	}
	dropin := r.cat("/usr/lib/systemd/system/memberd.service.d/10-vm-image.conf")
	if !strings.Contains(dropin, "ExecCondition=+/usr/lib/memberd/vm-configured") {
		t.Errorf("memberd.service drop-in lacks the config condition:\n%s", dropin)
	}
	for _, f := range []string{"/usr/lib/memberd/vm-seed", "/usr/lib/memberd/vm-configured"} {
		if st := r.stat(f); !strings.Contains(st, "Mode:  0755") {
			t.Errorf("%s is not 0755", f)
		}
	}
	if mid := r.debugfs("stat /etc/machine-id"); !strings.Contains(mid, "Size: 0") {
		t.Errorf("/etc/machine-id is not empty (each VM must make its own):\n%s", mid)
	}
	if fstab := r.cat("/etc/fstab"); !strings.Contains(fstab, "LABEL=memberd-root") {
		t.Errorf("fstab does not mount LABEL=memberd-root:\n%s", fstab)
	}
	// No secrets baked in.
	if out := r.debugfs("stat /etc/memberd/hsm.pin"); strings.Contains(out, "Inode:") {
		t.Errorf("the image holds /etc/memberd/hsm.pin")
	}
}

// console boots the image and returns the serial console log's lines as
// they come, and a stop function.
type vm struct {
	log  string
	cmd  *exec.Cmd
	done chan error
}

// boot starts QEMU (TCG, no KVM) with UEFI (OVMF) on a copy-on-write overlay
// of the image, no NIC, the serial console to a file; extra disks are
// attached as virtio drives.
func boot(t *testing.T, img string, extra ...string) *vm {
	t.Helper()
	qemu := testenv.Command(t, "qemu-system-x86_64", "qemu-system-x86")
	testenv.Command(t, "qemu-img", "qemu-utils")
	code, vars := "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"
	if _, err := os.Stat(code); err != nil {
		testenv.Missing(t, "OVMF (UEFI firmware for QEMU)", "apt-get install ovmf")
	}
	dir := t.TempDir()
	overlay := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", img, "-F", "raw", overlay)
	v, err := os.ReadFile(vars)
	if err != nil {
		t.Fatal(err)
	}
	myVars := filepath.Join(dir, "vars.fd")
	if err := os.WriteFile(myVars, v, 0o600); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(dir, "console.log")
	args := []string{
		"-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "2", "-m", "1024",
		"-display", "none", "-monitor", "none", "-nic", "none", "-no-reboot",
		"-serial", "file:" + log,
		"-drive", "if=pflash,format=raw,readonly=on,file=" + code,
		"-drive", "if=pflash,format=raw,file=" + myVars,
		"-drive", "if=virtio,format=qcow2,file=" + overlay,
	}
	for _, e := range extra {
		args = append(args, "-drive", "if=virtio,format=raw,readonly=on,file="+e)
	}
	cmd := exec.Command(qemu, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	m := &vm{log: log, cmd: cmd, done: make(chan error, 1)}
	go func() { m.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-m.done
		if t.Failed() {
			b, _ := os.ReadFile(log)
			lines := strings.Split(string(b), "\n")
			if len(lines) > 150 {
				lines = lines[len(lines)-150:]
			}
			t.Logf("console (last %d lines):\n%s", len(lines), strings.Join(lines, "\n"))
		}
	})
	return m
}

// waitFor reads the console log until every pattern has matched a line (in
// any order), the VM exits, or ctx ends. It returns when each was first
// seen, relative to start.
func (m *vm) waitFor(ctx context.Context, t *testing.T, start time.Time, patterns ...*regexp.Regexp) map[string]time.Duration {
	t.Helper()
	seen := map[string]time.Duration{}
	off := 0
	var partial string
	for {
		b, _ := os.ReadFile(m.log)
		if len(b) > off {
			sc := bufio.NewScanner(strings.NewReader(partial + string(b[off:])))
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			chunk := partial + string(b[off:])
			partial = ""
			if !strings.HasSuffix(chunk, "\n") {
				if i := strings.LastIndexByte(chunk, '\n'); i >= 0 {
					partial = chunk[i+1:]
				} else {
					partial = chunk
				}
			}
			off = len(b)
			for sc.Scan() {
				line := ansi.ReplaceAllString(sc.Text(), "")
				for _, p := range patterns {
					if _, ok := seen[p.String()]; !ok && p.MatchString(line) {
						seen[p.String()] = time.Since(start)
						t.Logf("console +%5.1fs: %s", time.Since(start).Seconds(), strings.TrimSpace(line))
					}
				}
			}
			if len(seen) == len(patterns) {
				return seen
			}
		}
		select {
		case err := <-m.done:
			m.done <- err
			t.Fatalf("QEMU exited (%v) before the console showed %v", err, missing(patterns, seen))
		case <-ctx.Done():
			t.Fatalf("after %s the console has not shown %v", time.Since(start).Round(time.Second), missing(patterns, seen))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// ansi matches the colour codes of systemd's status lines.
var ansi = regexp.MustCompile(`\x1b\[[0-9;]*m`)

func missing(patterns []*regexp.Regexp, seen map[string]time.Duration) []string {
	var out []string
	for _, p := range patterns {
		if _, ok := seen[p.String()]; !ok {
			out = append(out, p.String())
		}
	}
	return out
}

// bootTimeout is how long a boot under software emulation may take.
func bootTimeout() time.Duration {
	if s := os.Getenv("MEMBERD_VM_BOOT_TIMEOUT"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			return d
		}
	}
	return 8 * time.Minute
}

// TestBootWaitsForConfig boots the image as built (no seed): systemd-boot
// loads the kernel, systemd boots, memberd-seed finds no seed, and
// memberd.service is skipped with its "waiting for its config" line rather
// than failed; nothing prompts.
func TestBootWaitsForConfig(t *testing.T) {
	img := image(t)
	start := time.Now()
	m := boot(t, img)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout())
	defer cancel()
	seen := m.waitFor(ctx, t, start,
		regexp.MustCompile(`Linux version \d`),
		regexp.MustCompile(`systemd 252`),
		regexp.MustCompile(`memberd-seed: no seed found`),
		regexp.MustCompile(`memberd: waiting for its config: /etc/memberd/hsm.pin is missing`),
		regexp.MustCompile(`login: `),
	)
	b, _ := os.ReadFile(m.log)
	for _, bad := range []string{"Failed to start", "memberd.service: Failed", "Please enter", "login timed out", "Kernel panic", "emergency mode"} {
		if strings.Contains(string(b), bad) {
			t.Errorf("console shows %q", bad)
		}
	}
	t.Logf("boot to memberd waiting for its config: %.1fs, to the login prompt: %.1fs (TCG, no KVM)",
		seen[`memberd: waiting for its config: /etc/memberd/hsm.pin is missing`].Seconds(), seen[`login: `].Seconds())
}

// TestBootAppliesSeed boots the image with a seed disk (vfat, label
// MEMBERDSEED) holding a 1-member demo consortium and its relay on the same
// host (memberd demo init, laid out by packaging/boot-test/stage.sh): the
// seed is applied at first boot, memberd-relay is enabled and started, and
// memberd.service becomes active (READY=1: relay connected, raft leader,
// ledger caught up) without anyone typing anything.
func TestBootAppliesSeed(t *testing.T) {
	img := image(t)
	bin := os.Getenv("MEMBERD_VM_BIN")
	if bin == "" {
		testenv.Missing(t, "MEMBERD_VM_BIN (bin/memberd, for memberd demo init)", "run make vm-image-test")
	}
	testenv.SoftHSMModule(t)
	testenv.Command(t, "mkfs.vfat", "dosfstools")
	testenv.Command(t, "mcopy", "mtools")
	dir := t.TempDir()
	demo, stage, seedDir := filepath.Join(dir, "demo"), filepath.Join(dir, "stage"), filepath.Join(dir, "seed")
	run(t, bin, "demo", "init", "--dir", demo, "--members", "1", "--relays", "1", "--hsm", "softhsm",
		"--relay-addr", "127.0.0.1:443")
	run(t, "bash", "../../packaging/boot-test/stage.sh", demo, stage)
	// One host: the member's and the relay's files together; the relay's
	// admin port moves off the member's.
	run(t, "cp", "-r", filepath.Join(stage, "member-a"), seedDir)
	run(t, "cp", "-r", filepath.Join(stage, "relay", "etc"), filepath.Join(stage, "relay", "var"), seedDir)
	relayYAML := filepath.Join(seedDir, "etc/memberd/relay.yaml")
	y, err := os.ReadFile(relayYAML)
	if err != nil {
		t.Fatal(err)
	}
	y2 := strings.Replace(string(y), "admin: 127.0.0.1:9464", "admin: 127.0.0.1:9465", 1)
	if y2 == string(y) {
		t.Fatalf("relay.yaml has no 'admin: 127.0.0.1:9464' line to move: has stage.sh changed?")
	}
	if err := os.WriteFile(relayYAML, []byte(y2), 0o640); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(seedDir, "setup.sh"))
	// Test only: memberd's own log on the console too (to see why if it does
	// not start), and a line once systemd has taken its READY=1
	// (ExecStartPost= of a Type=notify unit runs only then).
	dropin := "[Service]\nStandardOutput=journal+console\nStandardError=journal+console\n" +
		"ExecStartPost=+/bin/sh -c 'echo \"memberd-test: memberd.service READY seen by systemd, memberd-relay.service $(systemctl is-active memberd-relay)\" >/dev/console'\n"
	if err := os.WriteFile(filepath.Join(seedDir, "etc/systemd/system/memberd.service.d/test.conf"), []byte(dropin), 0o644); err != nil {
		t.Fatal(err)
	}
	seed := filepath.Join(dir, "seed.img")
	run(t, "mkfs.vfat", "-C", "-n", "MEMBERDSEED", seed, "65536")
	entries, err := filepath.Glob(filepath.Join(seedDir, "*"))
	if err != nil || len(entries) == 0 {
		t.Fatalf("empty seed folder %s: %v", seedDir, err)
	}
	os.Setenv("MTOOLS_SKIP_CHECK", "1")
	run(t, "mcopy", append(append([]string{"-s", "-i", seed}, entries...), "::/")...)

	start := time.Now()
	m := boot(t, img, seed)
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout())
	defer cancel()
	started := `^memberd-test: memberd.service READY seen by systemd, memberd-relay.service active$`
	seen := m.waitFor(ctx, t, start,
		regexp.MustCompile(`memberd-seed: seed: /dev/vd[b-z] \(label MEMBERDSEED\)`),
		regexp.MustCompile(`memberd-seed: copied etc/memberd/hsm.pin`),
		regexp.MustCompile(`memberd-seed: copied etc/memberd/relay.pin`),
		regexp.MustCompile(`"msg":"relay connected","member":"member-a"`),
		regexp.MustCompile(`"msg":"ready: systemd notified"`),
		regexp.MustCompile(started),
	)
	b, _ := os.ReadFile(m.log)
	for _, bad := range []string{"Failed to start", "memberd: waiting for its config", "Kernel panic", "emergency mode"} {
		if strings.Contains(string(b), bad) {
			t.Errorf("console shows %q", bad)
		}
	}
	t.Logf("boot with a seed to memberd.service active: %.1fs (TCG, no KVM)", seen[started].Seconds())
}

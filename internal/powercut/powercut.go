// Package powercut runs a program inside a virtual machine with a real Linux
// kernel and cuts its power: the host SIGKILLs qemu, which drops everything
// the guest kernel had not yet written to the virtual disk (its page cache,
// writes in flight), exactly what a power cut drops. The tests of the spool
// (buffer.TestPowerCut) and of the whole agent (forwarder.TestPowerCutAgent)
// boot the machine again on the same disk after every cut and check what
// survived.
//
// The machine is Debian's own kernel (/boot/vmlinuz-*, package
// linux-image-amd64) under qemu with software emulation (qemu-system-x86,
// -accel tcg: nested KVM is not available on the CI machine), booted with an
// initramfs built here: guestinit as /init, the kernel modules it loads
// (virtio, ext4, virtio_net, with their dependencies, from /lib/modules),
// and the test's own binaries. The test disk is a raw ext4 image
// (mkfs.ext4, e2fsprogs) attached as /dev/vda with if=virtio,cache=none, so
// the guest's flushes are the only thing that makes its writes durable on
// the host file. The guest reports over its second serial port (ttyS1),
// which qemu writes to a file on the host; the console (ttyS0) goes to
// another file.
//
// Everything is opt-in: the tests run only with BGPEDGE_POWERCUT=1
// (scripts/powercut-test.sh, `make powercut`).
package powercut

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Enabled reports whether the power-cut tests were asked for; they boot
// virtual machines for minutes, so they never run by default.
func Enabled() bool { return os.Getenv("BGPEDGE_POWERCUT") == "1" }

// Skip skips t unless the power-cut tests were asked for.
func Skip(t testing.TB) {
	t.Helper()
	if !Enabled() {
		t.Skip("boots qemu for minutes: run with BGPEDGE_POWERCUT=1 (scripts/powercut-test.sh, make powercut)")
	}
}

// EnvInt is an integer from the environment, or def.
func EnvInt(t testing.TB, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a number ≥ 0", name, v)
	}
	return n
}

// RepoRoot is the checkout's top directory.
func RepoRoot() string {
	wd, _ := os.Getwd()
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return wd
		}
	}
}

// CacheDir is where built initramfs images are kept between runs:
// .cache/powercut in the checkout, or BGPEDGE_POWERCUT_CACHE.
func CacheDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("BGPEDGE_POWERCUT_CACHE")
	if dir == "" {
		dir = filepath.Join(RepoRoot(), ".cache", "powercut")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Kernel is an installed Debian kernel.
type Kernel struct {
	Image   string // what qemu boots: the uncompressed vmlinux when it could be extracted, else /boot/vmlinuz-<release>
	Release string
	modDir  string // /lib/modules/<release>
}

// FindKernel returns the newest kernel in /boot whose modules are
// installed, or fails the test (under CI) or skips it.
func FindKernel(t testing.TB) Kernel {
	t.Helper()
	images, _ := filepath.Glob("/boot/vmlinuz-*")
	var found []Kernel
	for _, img := range images {
		rel := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		mod := filepath.Join("/lib/modules", rel)
		if _, err := os.Stat(filepath.Join(mod, "modules.dep")); err == nil {
			found = append(found, Kernel{Image: img, Release: rel, modDir: mod})
		}
	}
	if len(found) == 0 {
		missing(t, "a Linux kernel with its modules (/boot/vmlinuz-*, /lib/modules)", "apt-get install linux-image-amd64 (scripts/deps.sh does)")
	}
	sort.Slice(found, func(i, j int) bool { return versionLess(found[i].Release, found[j].Release) })
	k := found[len(found)-1]
	if vmlinux, err := extractVmlinux(k.Image, filepath.Join(CacheDir(t), "vmlinux-"+k.Release)); err == nil {
		k.Image = vmlinux
	} else {
		t.Logf("booting the compressed %s (slower: its decompressor runs emulated): %v", k.Image, err)
	}
	return k
}

// extractVmlinux finds the compressed kernel inside a bzImage and writes it
// out uncompressed, once (cached). qemu boots that ELF through its PVH entry
// point (CONFIG_PVH, as Debian's kernels have) without the BIOS and the
// decompressor, whose emulation takes 5-15 s of every boot.
func extractVmlinux(bzImage, out string) (string, error) {
	if fileExists(out) {
		return out, nil
	}
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return "", err
	}
	formats := []struct {
		magic []byte
		cmd   []string
	}{
		{[]byte("\xfd7zXZ\x00"), []string{"xz", "-dc"}},
		{[]byte{0x28, 0xb5, 0x2f, 0xfd}, []string{"zstd", "-dc"}},
		{[]byte{0x1f, 0x8b, 0x08}, []string{"gzip", "-dc"}},
	}
	for _, f := range formats {
		for off := 0; ; {
			i := bytes.Index(b[off:], f.magic)
			if i < 0 {
				break
			}
			off += i
			var elf bytes.Buffer
			cmd := exec.Command(f.cmd[0], f.cmd[1:]...)
			cmd.Stdin = bytes.NewReader(b[off:])
			cmd.Stdout = &elf
			_ = cmd.Run() // trailing data after the stream makes some decompressors complain
			if elf.Len() > 1<<20 && bytes.HasPrefix(elf.Bytes(), []byte("\x7fELF")) && bytes.Contains(elf.Bytes(), []byte("Xen\x00")) {
				tmp := out + ".tmp"
				if err := os.WriteFile(tmp, elf.Bytes(), 0o644); err != nil {
					return "", err
				}
				return out, os.Rename(tmp, out)
			}
			off++
		}
	}
	return "", fmt.Errorf("no compressed ELF kernel with a PVH note found in %s", bzImage)
}

// versionLess compares kernel releases by their numeric fields.
func versionLess(a, b string) bool {
	split := func(s string) []int {
		var out []int
		for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r < '0' || r > '9' }) {
			n, _ := strconv.Atoi(f)
			out = append(out, n)
		}
		return out
	}
	x, y := split(a), split(b)
	for i := 0; i < len(x) && i < len(y); i++ {
		if x[i] != y[i] {
			return x[i] < y[i]
		}
	}
	return len(x) < len(y)
}

// guestModules are what the machine needs beyond the kernel image: the
// virtio PCI transport, the disk, ext4 (whose checksums need a crc32c
// implementation: the generic one, as the emulated CPU may lack SSE 4.2) and
// the network card.
var guestModules = []string{"crc32c_generic", "virtio_pci", "virtio_blk", "ext4", "virtio_net"}

// Modules returns the module files the machine loads, dependencies first.
func (k Kernel) Modules() ([]string, error) {
	b, err := os.ReadFile(filepath.Join(k.modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{} // module name → its line's files, module first
	for _, line := range strings.Split(string(b), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[modName(mod)] = append([]string{mod}, strings.Fields(rest)...)
	}
	var order []string
	seen := map[string]bool{}
	var add func(name string) error
	add = func(name string) error {
		if seen[name] {
			return nil
		}
		seen[name] = true
		files, ok := deps[name]
		if !ok {
			return fmt.Errorf("module %s not in %s/modules.dep", name, k.modDir)
		}
		// modules.dep lists a module's dependencies so that loading them
		// from the last to the first works; each is also resolved on its own.
		for i := len(files) - 1; i >= 1; i-- {
			if err := add(modName(files[i])); err != nil {
				return err
			}
		}
		order = append(order, filepath.Join(k.modDir, files[0]))
		return nil
	}
	for _, m := range guestModules {
		if err := add(m); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// modName is the module name of a modules.dep path: kernel/fs/ext4/ext4.ko.xz → ext4.
func modName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// File is one entry of an initramfs.
type File struct {
	Path string // inside the image, without the leading /
	Src  string // host file to copy, or
	Data []byte // the content
	Mode os.FileMode
}

// Initramfs builds (or finds in the cache) an uncompressed newc cpio image
// with guestinit as /init, the kernel's modules listed in /etc/modules and
// files, and returns its path. The cache key is the hash of everything in it.
func Initramfs(t testing.TB, k Kernel, name string, files []File) string {
	t.Helper()
	root := RepoRoot()
	bin := t.TempDir()
	guestinit := filepath.Join(bin, "guestinit")
	GoBuild(t, guestinit, root, "build", "./internal/powercut/guestinit")
	mods, err := k.Modules()
	if err != nil {
		t.Fatal(err)
	}
	all := []File{{Path: "init", Src: guestinit, Mode: 0o755}}
	var list bytes.Buffer
	for _, m := range mods {
		p := strings.TrimPrefix(m, "/")
		all = append(all, File{Path: p, Src: m, Mode: 0o644})
		fmt.Fprintf(&list, "/%s\n", p)
	}
	all = append(all, File{Path: "etc/modules", Data: list.Bytes(), Mode: 0o644})
	all = append(all, files...)

	h := sha256.New()
	fmt.Fprintf(h, "powercut initramfs v1\n%s\n", k.Release)
	for i := range all {
		f := &all[i]
		if f.Src != "" {
			b, err := os.ReadFile(f.Src)
			if err != nil {
				t.Fatal(err)
			}
			f.Data = b
		}
		fmt.Fprintf(h, "%s %o %d\n", f.Path, f.Mode, len(f.Data))
		h.Write(f.Data)
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	path := filepath.Join(CacheDir(t), fmt.Sprintf("initramfs-%s-%s-%s.cpio", name, k.Release, key))
	if _, err := os.Stat(path); err == nil {
		return path
	}
	// Older images of this name are stale: keep the cache to one per name.
	old, _ := filepath.Glob(filepath.Join(CacheDir(t), "initramfs-"+name+"-*.cpio"))
	for _, o := range old {
		_ = os.Remove(o)
	}
	tmp := path + ".tmp"
	if err := writeCpio(tmp, all); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// GoBuild runs `go <args> -o out` in dir as a static, stripped
// linux/amd64 build.
func GoBuild(t testing.TB, out, dir string, args ...string) {
	t.Helper()
	args = append(args[:1:1], append([]string{"-trimpath", "-ldflags=-s -w", "-o", out}, args[1:]...)...)
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
}

// writeCpio writes files as a newc archive, with the directories they need.
func writeCpio(path string, files []File) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	ino := 1
	entry := func(name string, mode uint32, data []byte) {
		hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
		ino++
		w.WriteString(hdr)
		w.WriteString(name)
		w.WriteByte(0)
		for n := len(hdr) + len(name) + 1; n%4 != 0; n++ {
			w.WriteByte(0)
		}
		w.Write(data)
		for n := len(data); n%4 != 0; n++ {
			w.WriteByte(0)
		}
	}
	dirs := map[string]bool{}
	var mkdir func(d string)
	mkdir = func(d string) {
		if d == "." || d == "" || dirs[d] {
			return
		}
		mkdir(filepath.Dir(d))
		dirs[d] = true
		entry(d, syscall.S_IFDIR|0o755, nil)
	}
	for _, d := range []string{"dev", "proc", "sys", "tmp", "data", "bin", "etc"} {
		mkdir(d)
	}
	for _, fl := range files {
		mkdir(filepath.Dir(fl.Path))
		entry(fl.Path, syscall.S_IFREG|uint32(fl.Mode.Perm()), fl.Data)
	}
	entry("TRAILER!!!", 0, nil)
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WorkDir is where a test keeps its disk images: a temporary directory, or
// BGPEDGE_POWERCUT_KEEP/<test name> to keep them for a post-mortem.
func WorkDir(t testing.TB) string {
	t.Helper()
	keep := os.Getenv("BGPEDGE_POWERCUT_KEEP")
	if keep == "" {
		return t.TempDir()
	}
	dir := filepath.Join(keep, t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// NewDisk creates a sparse raw image of size bytes holding an empty ext4
// file system (inode tables and journal initialised now, so the guest
// kernel does not zero them in the background).
func NewDisk(t testing.TB, path string, size int64) {
	t.Helper()
	mkfs := binary(t, "mkfs.ext4", "e2fsprogs")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cmd := exec.Command(mkfs, "-q", "-F", "-L", "powercut", "-E", "lazy_itable_init=0,lazy_journal_init=0", path)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, b)
	}
}

// CopyOut copies directory dir of the ext4 image into dest on the host,
// without mounting it: a copy of the image is first recovered by e2fsck
// (which replays the journal, as the kernel's mount would), then debugfs
// dumps the directory. It returns e2fsck's output.
func CopyOut(t testing.TB, image, dir, dest string) string {
	t.Helper()
	e2fsck := binary(t, "e2fsck", "e2fsprogs")
	debugfs := binary(t, "debugfs", "e2fsprogs")
	cp := filepath.Join(t.TempDir(), "recovered.img")
	if b, err := exec.Command("cp", "--sparse=always", image, cp).CombinedOutput(); err != nil {
		t.Fatalf("copy the image: %v\n%s", err, b)
	}
	fsck, err := exec.Command(e2fsck, "-fy", cp).CombinedOutput()
	var ee *exec.ExitError
	// 0: clean; 1: errors corrected (a journal replay counts); 2: corrected, reboot.
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() <= 2) {
		t.Fatalf("e2fsck on the power-cut image: %v\n%s", err, fsck)
	}
	if err := os.MkdirAll(dest, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(debugfs, "-R", fmt.Sprintf("rdump %s %s", dir, dest), cp).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs rdump %s: %v\n%s", dir, err, out)
	}
	return string(fsck)
}

func binary(t testing.TB, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		if p := filepath.Join(dir, name); fileExists(p) {
			return p
		}
	}
	missing(t, name, "apt-get install "+pkg+" (scripts/deps.sh does)")
	return ""
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func missing(t testing.TB, what, how string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is required under CI and was not found: %s", what, how)
	}
	t.Skipf("%s not available (%s)", what, how)
}

// Machine describes the virtual machine of one boot.
type Machine struct {
	Kernel    Kernel
	Initramfs string
	Disk      string
	Env       []string // NAME=value for guestinit and the command (the kernel passes them on)
	Command   []string // run by guestinit
	MemoryMiB int      // default 512
	CPUs      int      // default 1
	// HostForward, when set, forwards this host loopback port to the
	// guest's port (HostForward → GuestPort) through qemu's user-mode
	// network with restrict=on: the guest can answer but never connect out.
	HostForward, GuestPort int
	Dir                    string // console and report files go here
}

// VM is one running boot of a Machine.
type VM struct {
	Console, Report string
	Started         time.Time

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	lines   chan string
}

// Boot starts qemu. Lines the guest writes to its report channel arrive on
// Lines() until qemu has exited and the file is read to its end.
func (m Machine) Boot(t testing.TB, n int) *VM {
	t.Helper()
	qemu := binary(t, "qemu-system-x86_64", "qemu-system-x86")
	mem, cpus := m.MemoryMiB, m.CPUs
	if mem == 0 {
		mem = 512
	}
	if cpus == 0 {
		cpus = 1
	}
	v := &VM{
		Console: filepath.Join(m.Dir, fmt.Sprintf("console-%02d.log", n)),
		Report:  filepath.Join(m.Dir, fmt.Sprintf("report-%02d.log", n)),
		exited:  make(chan struct{}),
		lines:   make(chan string, 4096),
	}
	// A kept directory may hold files of an earlier run: the tail must not
	// read them before qemu truncates them.
	for _, f := range []string{v.Console, v.Report} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	appendLine := []string{"console=ttyS0", "quiet", "panic=-1", "oops=panic", "tsc=reliable"}
	appendLine = append(appendLine, m.Env...)
	appendLine = append(appendLine, "--")
	appendLine = append(appendLine, m.Command...)
	args := []string{
		"-accel", "tcg", "-machine", "pc", "-cpu", "max",
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-reboot", "-display", "none",
		"-kernel", m.Kernel.Image, "-initrd", m.Initramfs,
		"-append", strings.Join(appendLine, " "),
		"-drive", "file=" + m.Disk + ",format=raw,if=virtio,cache=none",
		"-serial", "file:" + v.Console,
		"-serial", "file:" + v.Report,
	}
	if m.HostForward != 0 {
		args = append(args,
			"-netdev", fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d", m.HostForward, m.GuestPort),
			"-device", "virtio-net-pci,netdev=n0,romfile=")
	}
	v.cmd = exec.Command(qemu, args...)
	// A test binary killed by its -timeout takes the machine with it.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	v.cmd.Stdout, v.cmd.Stderr = &stderr, &stderr
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	v.Started = time.Now()
	go func() {
		v.waitErr = v.cmd.Wait()
		if stderr.Len() > 0 {
			v.waitErr = fmt.Errorf("%v: %s", v.waitErr, bytes.TrimSpace(stderr.Bytes()))
		}
		close(v.exited)
	}()
	go v.tail()
	t.Cleanup(func() { v.Kill() })
	return v
}

// tail follows the report file until qemu has exited and it is read to the end.
func (v *VM) tail() {
	defer close(v.lines)
	var f *os.File
	for f == nil {
		var err error
		if f, err = os.Open(v.Report); err != nil {
			select {
			case <-v.exited:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 1<<20)
	var partial []byte
	for {
		b, err := r.ReadBytes('\n')
		partial = append(partial, b...)
		if err == nil {
			v.lines <- strings.TrimRight(string(partial), "\r\n")
			partial = partial[:0]
			continue
		}
		if err != io.EOF {
			return
		}
		select {
		case <-v.exited:
			// One more read: what qemu wrote just before it died.
			for {
				b, err := r.ReadBytes('\n')
				partial = append(partial, b...)
				if err != nil {
					return // a line cut short by the power cut is not a report
				}
				v.lines <- strings.TrimRight(string(partial), "\r\n")
				partial = partial[:0]
			}
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Lines delivers the report lines.
func (v *VM) Lines() <-chan string { return v.lines }

// Kill cuts the power: SIGKILL to qemu, then waits for it.
func (v *VM) Kill() {
	select {
	case <-v.exited:
		return
	default:
	}
	_ = v.cmd.Process.Signal(syscall.SIGKILL)
	<-v.exited
}

// Exited is closed once qemu has exited.
func (v *VM) Exited() <-chan struct{} { return v.exited }

// Err is how qemu ended (after Exited).
func (v *VM) Err() error { return v.waitErr }

// ConsoleTail is the end of the guest's console, for failure messages.
func (v *VM) ConsoleTail() string {
	b, _ := os.ReadFile(v.Console)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return strings.ReplaceAll(string(b), "\r", "")
}

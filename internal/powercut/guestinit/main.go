// Command guestinit is PID 1 of the power-cut test's virtual machine (see
// package powercut): it is /init of an initramfs built by the test, started
// by Debian's own kernel under qemu. It loads the kernel modules listed in
// /etc/modules (virtio, ext4, virtio_net), mounts the test disk /dev/vda on
// /data, brings up the network when the machine has a NIC, and runs the
// command given on the kernel command line after "--", with the report
// channel /dev/ttyS1 (the machine's second serial port, a file on the host)
// as its stdout or, in agent mode, used by itself.
//
// The kernel passes parameters of its command line it does not know to init
// as environment variables; guestinit reads:
//
//	PCMODE=spool   the command writes its report lines to stdout (ttyS1)
//	PCMODE=agent   the command is `bgpedge run`: before starting it guestinit
//	               opens its spool read-only and reports "O <last seq> <acked>
//	               <quarantined> <segments that do not verify>", then reports
//	               "Y" once /readyz answers and
//	               "D <appended records>" whenever
//	               bgpedge_buffer_appended_records_total changes (polled
//	               every 50 ms): what the agent had made durable
//	PCSPOOL=dir    the spool directory, in agent mode
//
// Lines on the report channel are the only thing the host trusts: a line
// that reached the host was written by the guest before the power cut.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/bgpedge/bgpedge/buffer"
)

const report = "/dev/ttyS1"

// sysFinitModule is finit_module(2) on amd64 (not in package syscall).
const sysFinitModule = 313

func main() {
	start := time.Now()
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "guestinit %6.2fs: "+format+"\n", append([]any{time.Since(start).Seconds()}, args...)...)
	}
	fail := func(format string, args ...any) {
		logf("FATAL: "+format, args...)
		if f, err := os.OpenFile(report, os.O_WRONLY, 0); err == nil {
			fmt.Fprintf(f, "E guestinit: "+format+"\n", args...)
			f.Close()
		}
		poweroff()
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "guestinit: not PID 1; this is the init of the power-cut test's virtual machine")
		os.Exit(2)
	}
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/tmp", "tmpfs"},
	} {
		_ = os.MkdirAll(m.dst, 0o755)
		if err := syscall.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil {
			fail("mount %s: %v", m.dst, err)
		}
	}
	if err := loadModules("/etc/modules", logf); err != nil {
		fail("%v", err)
	}
	if err := waitFor("/dev/vda", 20*time.Second); err != nil {
		fail("%v", err)
	}
	_ = os.MkdirAll("/data", 0o755)
	if err := syscall.Mount("/dev/vda", "/data", "ext4", 0, ""); err != nil {
		fail("mount /dev/vda on /data: %v", err)
	}
	uptime, _ := os.ReadFile("/proc/uptime")
	logf("modules loaded, /dev/vda mounted on /data (uptime %s)", strings.Fields(string(uptime) + " ?")[0])
	if err := network(logf); err != nil {
		fail("network: %v", err)
	}
	out, err := openReport()
	if err != nil {
		fail("%v", err)
	}
	argv := os.Args[1:]
	if len(argv) == 0 {
		fail("no command after -- on the kernel command line")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/data"
	cmd.Env = []string{"PATH=/bin", "HOME=/data", "GOTRACEBACK=all"}
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PC") || strings.HasPrefix(kv, "BGPEDGE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	mode := os.Getenv("PCMODE")
	switch mode {
	case "spool":
		cmd.Stdout = out
	case "agent":
		dir := os.Getenv("PCSPOOL")
		if err := spoolReport(dir, out); err != nil {
			fail("%v", err)
		}
	default:
		fail("PCMODE=%q: want spool or agent", mode)
	}
	if err := cmd.Start(); err != nil {
		fail("start %v: %v", argv, err)
	}
	logf("started %v", argv)
	if mode == "agent" {
		go watchAgent(out, logf)
	}
	err = cmd.Wait()
	fmt.Fprintf(out, "X %v exited: %v\n", argv[0], err)
	logf("%v exited: %v", argv, err)
	syscall.Sync()
	if err := syscall.Unmount("/data", 0); err != nil {
		logf("unmount /data: %v", err)
	}
	poweroff()
}

func poweroff() {
	syscall.Sync()
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// loadModules loads the modules listed in path, one file name a line,
// dependencies first (the host wrote them in that order).
func loadModules(path string, logf func(string, ...any)) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	for _, name := range strings.Fields(string(b)) {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		var flags uintptr
		if ext := filepath.Ext(name); ext == ".xz" || ext == ".zst" || ext == ".gz" {
			flags = 4 // MODULE_INIT_COMPRESSED_FILE: the kernel decompresses it
		}
		params := []byte{0}
		_, _, errno := syscall.Syscall(sysFinitModule, f.Fd(), uintptr(unsafe.Pointer(&params[0])), flags)
		f.Close()
		switch errno {
		case 0, syscall.EEXIST:
		case syscall.ENODEV: // a driver for hardware this machine does not have (crc32c-intel under TCG)
			logf("module %s: %v (skipped)", filepath.Base(name), errno)
		default:
			return fmt.Errorf("load module %s: %v", name, errno)
		}
	}
	return nil
}

func waitFor(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear in %v: %w", path, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// openReport opens the second serial port in raw mode (no CR LF translation).
func openReport() (*os.File, error) {
	f, err := os.OpenFile(report, os.O_WRONLY|syscall.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("open report channel: %w", err)
	}
	var t syscall.Termios
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TCGETS, uintptr(unsafe.Pointer(&t))); errno != 0 {
		return nil, fmt.Errorf("TCGETS %s: %v", report, errno)
	}
	t.Oflag &^= syscall.OPOST
	t.Lflag &^= syscall.ECHO | syscall.ICANON | syscall.ISIG | syscall.IEXTEN
	if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), syscall.TCSETS, uintptr(unsafe.Pointer(&t))); errno != 0 {
		return nil, fmt.Errorf("TCSETS %s: %v", report, errno)
	}
	return f, nil
}

// network brings up lo and, when there is one, the first other interface
// with qemu's user-mode network address 10.0.2.15/24. No route is set: the
// guest only answers connections forwarded to it.
func network(logf func(string, ...any)) error {
	if err := ifup("lo", nil); err != nil {
		return err
	}
	ents, _ := os.ReadDir("/sys/class/net")
	for _, e := range ents {
		if e.Name() == "lo" {
			continue
		}
		if err := ifup(e.Name(), []byte{10, 0, 2, 15}); err != nil {
			return err
		}
		logf("network: %s 10.0.2.15/24", e.Name())
		return nil
	}
	return nil
}

type ifreqAddr struct {
	name [16]byte
	addr syscall.RawSockaddrInet4
	_    [8]byte
}

type ifreqFlags struct {
	name  [16]byte
	flags uint16
	_     [22]byte
}

func ifup(name string, ip []byte) error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	ioctl := func(req uintptr, arg unsafe.Pointer) error {
		if _, _, errno := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), req, uintptr(arg)); errno != 0 {
			return fmt.Errorf("%s: ioctl %#x: %v", name, req, errno)
		}
		return nil
	}
	if ip != nil {
		var r ifreqAddr
		copy(r.name[:], name)
		r.addr.Family = syscall.AF_INET
		copy(r.addr.Addr[:], ip)
		if err := ioctl(syscall.SIOCSIFADDR, unsafe.Pointer(&r)); err != nil {
			return err
		}
		copy(r.addr.Addr[:], []byte{255, 255, 255, 0})
		if err := ioctl(syscall.SIOCSIFNETMASK, unsafe.Pointer(&r)); err != nil {
			return err
		}
	}
	var r ifreqFlags
	copy(r.name[:], name)
	if err := ioctl(syscall.SIOCGIFFLAGS, unsafe.Pointer(&r)); err != nil {
		return err
	}
	r.flags |= syscall.IFF_UP | syscall.IFF_RUNNING
	return ioctl(syscall.SIOCSIFFLAGS, unsafe.Pointer(&r))
}

// spoolReport opens the agent's spool read-only, as it is after the power
// cut and before the agent recovers it, and reports where it ends.
func spoolReport(dir string, out *os.File) error {
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		_, err := fmt.Fprintf(out, "O 0 0 0 0\n")
		return err
	}
	var logs bytes.Buffer
	s, err := buffer.Open(buffer.Options{Dir: dir, ReadOnly: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	os.Stderr.Write(logs.Bytes())
	if err != nil {
		fmt.Fprintf(out, "E open spool read-only: %v\n", err)
		return err
	}
	st := s.Stats()
	_ = s.Close()
	q, err := buffer.Quarantined(dir)
	if err != nil {
		return err
	}
	// A segment that fails verification read-only is left in place: the
	// read-only open reads a torn last commit as of the commit before, the
	// agent's own Open rolls it back on disk (or quarantines a segment that
	// does not verify at all, which the next boot's count shows).
	torn := len(st.TornSegments) + len(st.UnreadableSegments)
	_, err = fmt.Fprintf(out, "O %d %d %d %d\n", st.LastSeq, st.AckedThrough, len(q), torn)
	return err
}

// watchAgent reports the agent's readiness, then what it has made durable.
func watchAgent(out *os.File, logf func(string, ...any)) {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get("http://127.0.0.1:9611/readyz")
		if err == nil {
			var st struct {
				Ready bool `json:"ready"`
			}
			ok := json.NewDecoder(resp.Body).Decode(&st) == nil && st.Ready
			resp.Body.Close()
			if ok {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(out, "Y\n")
	logf("agent ready")
	var last float64 = -1
	for {
		time.Sleep(50 * time.Millisecond)
		resp, err := client.Get("http://127.0.0.1:9611/metrics")
		if err != nil {
			continue
		}
		v, ok := metric(resp, "bgpedge_buffer_appended_records_total")
		resp.Body.Close()
		if ok && v != last {
			last = v
			fmt.Fprintf(out, "D %s\n", strconv.FormatFloat(v, 'f', 0, 64))
		}
	}
}

func metric(resp *http.Response, name string) (float64, bool) {
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	prefix := []byte(name + " ")
	for sc.Scan() {
		if v, ok := bytes.CutPrefix(sc.Bytes(), prefix); ok {
			f, err := strconv.ParseFloat(string(v), 64)
			return f, err == nil
		}
	}
	return 0, false
}

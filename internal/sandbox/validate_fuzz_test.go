package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"
	"unsafe"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// fuzzLabelKeyOK is the label key rule written independently of
// labelKeyRE.
func fuzzLabelKeyOK(k string) bool {
	alnum := func(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' }
	if len(k) == 0 || len(k) > MaxLabelKeyLen || !alnum(k[0]) || !alnum(k[len(k)-1]) {
		return false
	}
	for i := range len(k) {
		if c := k[i]; !alnum(c) && !strings.ContainsRune("._/-", rune(c)) {
			return false
		}
	}
	return true
}

// fuzzTextOK reports whether s is valid UTF-8 and every rune passes ok.
func fuzzTextOK(s string, ok func(rune) bool) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !ok(r) {
			return false
		}
	}
	return true
}

// closePlanFiles closes every open file a plan holds, whichever fields
// hold them, so that a long fuzz run does not run out of descriptors.
func closePlanFiles(p *plan) {
	if p == nil {
		return
	}
	v := reflect.ValueOf(p).Elem()
	for i := range v.NumField() {
		if fv := v.Field(i); fv.Type() == reflect.TypeFor[*os.File]() {
			if f := *(**os.File)(unsafe.Pointer(fv.UnsafeAddr())); f != nil {
				f.Close()
			}
		}
	}
}

// FuzzValidate feeds hostile CreateRequests to the manager's validation:
// it never panics; a refusal is InvalidArgument, PermissionDenied or
// NotFound; a request with a bad count, boot args, label or TTL is
// InvalidArgument; and an accepted one has every value in range and every
// path resolved to a regular file strictly inside an allowed directory.
// Paths are relative to a data dir made for the run unless raw is set.
func FuzzValidate(f *testing.F) {
	dataDir := f.TempDir()
	outside := f.TempDir()
	for _, d := range []string{KernelsDir, ImagesDir, filepath.Join(ImagesDir, "adir")} {
		if err := os.MkdirAll(filepath.Join(dataDir, d), 0o755); err != nil {
			f.Fatal(err)
		}
	}
	for _, p := range []string{filepath.Join(dataDir, KernelsDir, "vmlinux"), filepath.Join(dataDir, ImagesDir, "rootfs.ext4"),
		filepath.Join(outside, "secret")} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			f.Fatal(err)
		}
	}
	for target, link := range map[string]string{
		"/etc/passwd":                      filepath.Join(dataDir, KernelsDir, "to-passwd"),
		filepath.Join(outside, "secret"):   filepath.Join(dataDir, ImagesDir, "to-outside"),
		"vmlinux":                          filepath.Join(dataDir, KernelsDir, "rel-link"),
		"/":                                filepath.Join(dataDir, ImagesDir, "up"),
		filepath.Join(dataDir, ImagesDir):  filepath.Join(dataDir, KernelsDir, "images-dir"),
		"loop2":                            filepath.Join(dataDir, ImagesDir, "loop1"),
		filepath.Join(dataDir, "loop1"):    filepath.Join(dataDir, ImagesDir, "loop2"),
		filepath.Join(outside, "missing"):  filepath.Join(dataDir, KernelsDir, "dangling"),
		filepath.Join(dataDir, "nowhere"):  filepath.Join(dataDir, KernelsDir, "dangling-in"),
		filepath.Join(dataDir, ImagesDir):  filepath.Join(dataDir, ImagesDir, "self"),
		filepath.Join(dataDir, KernelsDir): filepath.Join(dataDir, KernelsDir, "kernels"),
	} {
		if err := os.Symlink(target, link); err != nil {
			f.Fatal(err)
		}
	}
	if err := syscall.Mkfifo(filepath.Join(dataDir, ImagesDir, "fifo"), 0o600); err != nil {
		f.Fatal(err)
	}
	m := &Manager{cfg: Config{
		DataDir: dataDir, DefaultVCPUs: 1, DefaultMemoryMiB: 128, DefaultBootArgs: "console=ttyS0",
		MaxVCPUs: 8, MinMemoryMiB: 128, MaxMemoryMiB: 4096,
		DefaultKernel: filepath.Join(dataDir, KernelsDir, "vmlinux"), DefaultRootfs: filepath.Join(dataDir, ImagesDir, "rootfs.ext4"),
		AllowedDirs: AllowedDirs(dataDir, nil),
	}}
	allowed := m.allowedDirs()

	type seed struct {
		vcpus, mem                   int
		kernel, initrd, rootfs, boot string
		key, value                   string
		ttl                          int64
		raw                          bool
	}
	for _, s := range []seed{
		{0, 0, "", "", "", "", "", "", 0, false},
		{2, 512, "kernels/vmlinux", "kernels/vmlinux", "images/rootfs.ext4", "console=ttyS0 reboot=k", "env", "dev", int64(time.Hour), false},
		{9, 0, "", "", "", "", "", "", 0, false},
		{-1, 64, "", "", "", "", "", "", 0, false},
		{0, 0, "", "", "", "a\nb", "", "", 0, false},
		{0, 0, "", "", "", "\xff", "", "", 0, false},
		{0, 0, "", "", "", strings.Repeat("x", MaxBootArgsLen+1), "", "", 0, false},
		{0, 0, "", "", "", "", "-bad", "v", 0, false},
		{0, 0, "", "", "", "", "a/b.c_d-e", "tab\there", 0, false},
		{0, 0, "", "", "", "", "k", strings.Repeat("é", MaxLabelValueLen+1), 0, false},
		{0, 0, "", "", "", "", "", "", -1, false},
		{0, 0, "", "", "", "", "", "", int64(MaxTTL) + 1, false},
		{0, 0, "kernels/to-passwd", "", "", "", "", "", 0, false},
		{0, 0, "kernels/../../../../etc/passwd", "", "", "", "", "", 0, false},
		{0, 0, "", "kernels/dangling", "images/to-outside", "", "", "", 0, false},
		{0, 0, "kernels/rel-link", "kernels/images-dir/rootfs.ext4", "images/up/etc/passwd", "", "", "", 0, false},
		{0, 0, "", "", "images/loop1", "", "", "", 0, false},
		{0, 0, "", "", "images/fifo", "", "", "", 0, false},
		{0, 0, "", "", "images/adir", "", "", "", 0, false},
		{0, 0, "kernels", "", "images/self/self/rootfs.ext4", "", "", "", 0, false},
		{0, 0, "/etc/passwd", "relative/initrd", "/dev/null", "", "", "", 0, true},
		{0, 0, "/proc/self/root/etc/passwd", "", "", "", "", "", 0, true},
		{0, 0, "/tmp/a\x00b", "", "", "", "", "", 0, true},
	} {
		f.Add(s.vcpus, s.mem, s.kernel, s.initrd, s.rootfs, s.boot, s.key, s.value, s.ttl, s.raw)
	}
	f.Fuzz(func(t *testing.T, vcpus, mem int, kernel, initrd, rootfs, boot, key, value string, ttl int64, raw bool) {
		abs := func(p string) string {
			if raw || p == "" {
				return p
			}
			return dataDir + "/" + p
		}
		req := CreateRequest{VCPUs: vcpus, MemoryMiB: mem, Kernel: abs(kernel), Initrd: abs(initrd), Rootfs: abs(rootfs),
			BootArgs: boot, TTL: time.Duration(ttl)}
		if key != "" || value != "" {
			req.Labels = map[string]string{key: value}
		}
		p, err := m.validate(req)
		defer closePlanFiles(p)
		if vcpus == 0 {
			vcpus = m.cfg.DefaultVCPUs
		}
		if mem == 0 {
			mem = m.cfg.DefaultMemoryMiB
		}
		if boot == "" {
			boot = m.cfg.DefaultBootArgs
		}
		badValue := vcpus < 1 || vcpus > m.cfg.MaxVCPUs || mem < m.cfg.MinMemoryMiB || mem > m.cfg.MaxMemoryMiB ||
			len(boot) > MaxBootArgsLen || !fuzzTextOK(boot, func(r rune) bool { return !unicode.IsControl(r) }) ||
			ttl < 0 || time.Duration(ttl) > MaxTTL
		if req.Labels != nil {
			badValue = badValue || !fuzzLabelKeyOK(key) || utf8.RuneCountInString(value) > MaxLabelValueLen ||
				!fuzzTextOK(value, unicode.IsPrint)
		}
		if err != nil {
			if badValue && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("bad value refused with %v, want InvalidArgument", err)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) && !errors.Is(err, errdefs.ErrPermissionDenied) &&
				!errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("refusal %v has no expected class", err)
			}
			return
		}
		if badValue {
			t.Fatalf("accepted a request with a bad value: %+v", req)
		}
		for kind, path := range map[string]string{"kernel": p.kernel, "initrd": p.initrd, "rootfs": p.rootfs} {
			if path == "" && kind == "initrd" && req.Initrd == "" {
				continue
			}
			inside := false
			for _, d := range allowed {
				inside = inside || strings.HasPrefix(path, d+"/")
			}
			fi, err := os.Lstat(path)
			if !inside || err != nil || !fi.Mode().IsRegular() {
				t.Fatalf("accepted %s %q resolves to %q, not a regular file inside %v (%v)", kind, kernel, path, allowed, err)
			}
			if real, err := filepath.EvalSymlinks(path); err != nil || real != path {
				t.Fatalf("accepted %s resolves to %q, which is not a real path (%q, %v)", kind, path, real, err)
			}
		}
	})
}

package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Request limits.
const (
	// MaxBootArgsLen is the longest accepted kernel command line.
	MaxBootArgsLen = vmm.MaxBootArgs
	// MaxLabels is the most labels a sandbox may carry.
	MaxLabels = 64
	// MaxLabelKeyLen is the longest label key.
	MaxLabelKeyLen = 63
	// MaxLabelValueLen is the longest label value, in characters.
	MaxLabelValueLen = 255
	// MaxTTL is the longest accepted time to live.
	MaxTTL = 30 * 24 * time.Hour
	// MaxEchoLen is the most bytes of a request's string (a path, a label
	// key, ...) that an error quotes, and so that the request log holds:
	// a longer one is cut, with a note of its full length.
	MaxEchoLen = 256
)

// labelKeyRE is the form of a label key: letters, digits, '.', '_', '/'
// and '-', starting and ending with a letter or digit.
var labelKeyRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9._/-]{0,61}[a-zA-Z0-9])?$`)

// plan is a validated CreateRequest with defaults applied and paths
// resolved. kernelFile, initrdFile (nil without an initrd) and rootfsFile
// are the checked, open files: the sandbox's copies are made from these
// descriptors, never by reopening a path. The caller closes them (close).
type plan struct {
	vcpus           int
	memoryMiB       int
	kernel          string
	kernelFile      *os.File
	initrd          string
	initrdFile      *os.File
	rootfs          string
	rootfsFile      *os.File
	bootArgs        string
	labels          map[string]string
	ttl             time.Duration
	trackDirtyPages bool
}

// close closes the plan's open files.
func (p *plan) close() {
	for _, f := range []*os.File{p.kernelFile, p.initrdFile, p.rootfsFile} {
		if f != nil {
			f.Close()
		}
	}
}

// quote returns s quoted for a message (QuoteToASCII), at most
// MaxEchoLen bytes of it, cut at a character boundary and followed by
// its full length when it is longer.
func quote(s string) string {
	if len(s) <= MaxEchoLen {
		return strconv.QuoteToASCII(s)
	}
	cut := MaxEchoLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", strconv.QuoteToASCII(s[:cut]), len(s))
}

// cause returns what went wrong in err without the path a *fs.PathError
// carries (the request's path, quoted by the caller within bounds).
func cause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// invalid returns an InvalidArgument error.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// validate checks req against the limits and the allowed directories. It
// opens nothing but the request's own files (read-only) and writes nothing.
func (m *Manager) validate(req CreateRequest) (p *plan, err error) {
	p = &plan{
		vcpus: req.VCPUs, memoryMiB: req.MemoryMiB, bootArgs: req.BootArgs,
		labels: maps.Clone(req.Labels), ttl: req.TTL, trackDirtyPages: req.TrackDirtyPages,
	}
	if p.vcpus == 0 {
		p.vcpus = m.cfg.DefaultVCPUs
	}
	if p.memoryMiB == 0 {
		p.memoryMiB = m.cfg.DefaultMemoryMiB
	}
	if p.bootArgs == "" {
		p.bootArgs = m.cfg.DefaultBootArgs
	}
	if p.vcpus < 1 || p.vcpus > m.cfg.MaxVCPUs {
		return nil, invalid("vcpus %d: must be between 1 and %d", p.vcpus, m.cfg.MaxVCPUs)
	}
	if p.memoryMiB < m.cfg.MinMemoryMiB || p.memoryMiB > m.cfg.MaxMemoryMiB {
		return nil, invalid("memory %d MiB: must be between %d and %d MiB", p.memoryMiB, m.cfg.MinMemoryMiB, m.cfg.MaxMemoryMiB)
	}
	if err := checkBootArgs(p.bootArgs); err != nil {
		return nil, err
	}
	if err := checkLabels(p.labels); err != nil {
		return nil, err
	}
	if p.ttl < 0 || p.ttl > MaxTTL {
		return nil, invalid("ttl %v: must be between 0 (none) and %v", p.ttl, MaxTTL)
	}

	kernel := req.Kernel
	if kernel == "" {
		kernel = m.cfg.DefaultKernel
	}
	rootfs := req.Rootfs
	if rootfs == "" {
		rootfs = m.cfg.DefaultRootfs
	}
	allowed := m.allowedDirs()
	opened := p // p is nil once a failure returns
	defer func() {
		if err != nil {
			opened.close()
		}
	}()
	if p.kernel, p.kernelFile, err = openFile(allowed, "kernel", kernel); err != nil {
		return nil, err
	}
	if req.Initrd != "" {
		if p.initrd, p.initrdFile, err = openFile(allowed, "initrd", req.Initrd); err != nil {
			return nil, err
		}
	}
	if p.rootfs, p.rootfsFile, err = openFile(allowed, "rootfs", rootfs); err != nil {
		return nil, err
	}
	return p, nil
}

// firecrackerCmdlineReserve is what Firecracker appends to the kernel
// command line, within the same MaxBootArgsLen limit: "root=/dev/vda rw"
// for the root drive and "pci=off" without --enable-pci, each after a
// space.
const firecrackerCmdlineReserve = len(" root=/dev/vda rw pci=off")

// checkBootArgs rejects command lines that, with what Firecracker
// appends, exceed the limit, control characters and unbalanced double
// quotes (the kernel would read everything after one, including the
// arguments appended to it, as a single quoted value).
func checkBootArgs(s string) error {
	if n := len(s) + firecrackerCmdlineReserve; n > MaxBootArgsLen {
		return invalid("boot args: %d bytes; with the %d Firecracker appends that is %d, the limit is %d",
			len(s), firecrackerCmdlineReserve, n, MaxBootArgsLen)
	}
	if !utf8.ValidString(s) {
		return invalid("boot args: not valid UTF-8")
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return invalid("boot args: control character %q not allowed", r)
		}
	}
	if strings.Count(s, `"`)%2 != 0 {
		return invalid("boot args: unbalanced double quote")
	}
	return nil
}

// bootArgsWith returns the command line a sandbox boots with: args with
// the network's kernel argument netArg (none when empty) among the
// kernel's own parameters, that is before a "--" (the words after it are
// init's arguments, and an ip= there configures nothing). The result,
// with what Firecracker appends, must fit the limit.
func bootArgsWith(args, netArg string) (string, error) {
	if netArg == "" {
		return args, nil
	}
	out := strings.TrimSpace(args + " " + netArg)
	if i := initArgsStart(args); i >= 0 {
		out = strings.TrimSpace(args[:i]) + " " + netArg + " " + args[i:]
		out = strings.TrimSpace(out)
	}
	if err := checkBootArgs(out); err != nil {
		return "", fmt.Errorf("with the network's %s added: %w", netArg, err)
	}
	return out, nil
}

// initArgsStart returns the offset of the first "--" word of a kernel
// command line outside double quotes (the kernel strips quotes before it
// compares), or -1.
func initArgsStart(s string) int {
	inQuote := false
	start := -1
	for i := 0; i <= len(s); i++ {
		if i == len(s) || (!inQuote && (s[i] == ' ' || s[i] == '\t')) {
			if start >= 0 && strings.ReplaceAll(s[start:i], `"`, "") == "--" {
				return start
			}
			start = -1
			continue
		}
		if start < 0 {
			start = i
		}
		if s[i] == '"' {
			inQuote = !inQuote
		}
	}
	return -1
}

// checkLabels validates label count, keys and values.
func checkLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return invalid("%d labels: at most %d are allowed", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if len(k) > MaxLabelKeyLen || !labelKeyRE.MatchString(k) {
			return invalid("label key %s: must be 1-%d characters of letters, digits, '.', '_', '/' and '-', "+
				"starting and ending with a letter or digit", quote(k), MaxLabelKeyLen)
		}
		if !utf8.ValidString(v) {
			return invalid("label %s: value is not valid UTF-8", k)
		}
		if n := utf8.RuneCountInString(v); n > MaxLabelValueLen {
			return invalid("label %s: value has %d characters, the limit is %d", k, n, MaxLabelValueLen)
		}
		for _, r := range v {
			if !unicode.IsPrint(r) {
				return invalid("label %s: value contains the non-printable character %q", k, r)
			}
		}
	}
	return nil
}

// allowedDirs returns the allowed directories with symlinks resolved;
// directories that do not exist (yet) are left out.
func (m *Manager) allowedDirs() []string {
	var dirs []string
	for _, d := range m.cfg.AllowedDirs {
		if r, err := filepath.EvalSymlinks(d); err == nil {
			dirs = append(dirs, r)
		}
	}
	return dirs
}

// within reports whether path lies strictly inside one of dirs (all
// absolute and clean).
func within(dirs []string, path string) bool {
	for _, d := range dirs {
		rel, err := filepath.Rel(d, path)
		if err == nil && rel != "." && filepath.IsLocal(rel) {
			return true
		}
	}
	return false
}

// openFile resolves path (absolute, symlinks followed), requires it to be a
// regular file inside one of the allowed directories, opens the resolved
// path without following a symlink and checks the descriptor again (type
// and real path), so that a file swapped in after the check is refused.
func openFile(allowed []string, kind, path string) (string, *os.File, error) {
	q := quote(path)
	switch {
	case path == "":
		return "", nil, invalid("%s: no path given and no default configured", kind)
	case strings.ContainsRune(path, 0):
		return "", nil, invalid("%s %s: contains a NUL byte", kind, q)
	case !filepath.IsAbs(path):
		return "", nil, invalid("%s %s: must be an absolute path", kind, q)
	}
	outside := func() error {
		return fmt.Errorf("%s %s: outside the allowed directories (%s): %w",
			kind, q, strings.Join(allowed, ", "), errdefs.ErrPermissionDenied)
	}
	resolved, err := filepath.EvalSymlinks(path)
	if err != nil {
		// Do not reveal whether paths outside the allowed directories exist.
		if !within(allowed, filepath.Clean(path)) {
			return "", nil, outside()
		}
		switch {
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
			return "", nil, fmt.Errorf("%s %s: no such file: %w", kind, q, errdefs.ErrNotFound)
		case errors.Is(err, fs.ErrPermission):
			return "", nil, fmt.Errorf("%s %s: %w", kind, q, errdefs.ErrPermissionDenied)
		default:
			return "", nil, invalid("%s %s: cannot be resolved: %v", kind, q, cause(err))
		}
	}
	if !within(allowed, resolved) {
		return "", nil, outside()
	}
	fi, err := os.Lstat(resolved)
	if err != nil {
		return "", nil, fmt.Errorf("%s %s: %v: %w", kind, q, cause(err), errdefs.ErrNotFound)
	}
	if !fi.Mode().IsRegular() {
		return "", nil, invalid("%s %s: not a regular file (%s)", kind, q, fileType(fi.Mode()))
	}
	fd, err := unix.Open(resolved, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", nil, fmt.Errorf("%s %s: no such file: %w", kind, q, errdefs.ErrNotFound)
		}
		return "", nil, fmt.Errorf("%s %s: changed while being checked or unreadable (%v): %w",
			kind, q, err, errdefs.ErrPermissionDenied)
	}
	f := os.NewFile(uintptr(fd), resolved)
	fail := func(err error) (string, *os.File, error) {
		f.Close()
		return "", nil, err
	}
	if fi, err = f.Stat(); err != nil {
		return fail(fmt.Errorf("%s %s: %v: %w", kind, q, cause(err), errdefs.ErrNotFound))
	}
	if !fi.Mode().IsRegular() {
		return fail(invalid("%s %s: not a regular file (%s)", kind, q, fileType(fi.Mode())))
	}
	real, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil || real != resolved || !within(allowed, real) {
		return fail(fmt.Errorf("%s %s: changed while being checked: %w", kind, q, errdefs.ErrPermissionDenied))
	}
	return resolved, f, nil
}

// fileType names a non-regular file type for messages.
func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeSymlink != 0:
		return "symlink"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	default:
		return m.Type().String()
	}
}

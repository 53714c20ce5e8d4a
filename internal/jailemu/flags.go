package jailemu

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Version is the jailer version the emulator reports.
const Version = "1.16.1"

// DefaultChrootBase is the jailer's default --chroot-base-dir.
const DefaultChrootBase = "/srv/jailer"

// DefaultNoFile is the jailer's default RLIMIT_NOFILE.
const DefaultNoFile = 2048

// errHelp and errVersion short-circuit parsing.
var (
	errHelp    = errors.New("help requested")
	errVersion = errors.New("version requested")
)

// Config is a parsed and checked jailer command line.
type Config struct {
	ID            string
	ExecFile      string // canonical path of the exec file
	ExecName      string // base name of ExecFile
	UID, GID      uint32
	ChrootBase    string
	Netns         string
	Daemonize     bool
	NewPidNs      bool
	CgroupVersion int
	ParentCgroup  string
	Cgroups       []CgroupValue
	FsizeLimit    *uint64
	NoFileLimit   uint64
	ExtraArgs     []string // Firecracker's arguments after "--"
}

// CgroupValue is one --cgroup <file>=<value>.
type CgroupValue struct {
	File       string // e.g. cpu.cfs_quota_us
	Controller string // e.g. cpu
	Value      string
}

// JailDir is <chroot base>/<exec name>/<id>, the directory to remove after
// the VMM exits.
func (c *Config) JailDir() string { return filepath.Join(c.ChrootBase, c.ExecName, c.ID) }

// ChrootDir is the jail's root directory.
func (c *Config) ChrootDir() string { return filepath.Join(c.JailDir(), "root") }

// PidFile is the host path of the pid file.
func (c *Config) PidFile() string { return filepath.Join(c.ChrootDir(), c.ExecName+".pid") }

type flagSpec struct {
	value      bool
	repeatable bool
}

var flagSpecs = map[string]flagSpec{
	"id":              {value: true},
	"exec-file":       {value: true},
	"uid":             {value: true},
	"gid":             {value: true},
	"chroot-base-dir": {value: true},
	"netns":           {value: true},
	"daemonize":       {},
	"new-pid-ns":      {},
	"cgroup":          {value: true, repeatable: true},
	"cgroup-version":  {value: true},
	"parent-cgroup":   {value: true},
	"resource-limit":  {value: true, repeatable: true},
	"version":         {},
	"help":            {},
}

// Parse parses the jailer's arguments (without the program name) and
// checks them against the file system as the real jailer does. It returns
// errHelp or errVersion for --help and --version.
func Parse(args []string) (*Config, error) {
	for _, a := range args {
		if a == "--" {
			break
		}
		switch a {
		case "--help":
			return nil, errHelp
		case "--version":
			return nil, errVersion
		}
	}
	vals := map[string][]string{}
	var extra []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			extra = append([]string{}, args[i+1:]...)
			break
		}
		name, ok := strings.CutPrefix(a, "--")
		if !ok || name == "" {
			return nil, fmt.Errorf("Found argument '%s' which wasn't expected, or isn't valid in this context", a)
		}
		spec, known := flagSpecs[name]
		if !known {
			return nil, fmt.Errorf("Found argument '%s' which wasn't expected, or isn't valid in this context", a)
		}
		if _, dup := vals[name]; dup && !spec.repeatable {
			return nil, fmt.Errorf("The argument '%s' was provided more than once", a)
		}
		v := ""
		if spec.value {
			if i+1 >= len(args) || strings.HasPrefix(args[i+1], "--") {
				return nil, fmt.Errorf("The argument '%s' requires a value, but none was supplied", a)
			}
			i++
			v = args[i]
		}
		vals[name] = append(vals[name], v)
	}
	one := func(n string) (string, bool) {
		v, ok := vals[n]
		if !ok {
			return "", false
		}
		return v[0], true
	}
	for _, req := range []string{"id", "exec-file", "uid", "gid"} {
		if _, ok := vals[req]; !ok {
			return nil, fmt.Errorf("Argument '--%s' required, but not found", req)
		}
	}
	c := &Config{NoFileLimit: DefaultNoFile, ExtraArgs: extra}
	c.ID, _ = one("id")
	if err := ValidID(c.ID); err != nil {
		return nil, fmt.Errorf("Invalid instance ID: %w", err)
	}
	for _, a := range extra {
		if a == "--id" {
			return nil, errors.New("Firecracker argument '--id' must not be given after '--': the jailer passes --id itself (Firecracker would exit 153 on the duplicate)")
		}
	}
	exe, _ := one("exec-file")
	canon, err := filepath.EvalSymlinks(exe)
	if err == nil {
		canon, err = filepath.Abs(canon)
	}
	if err != nil {
		return nil, fmt.Errorf("Failed to canonicalize path %s: %w", exe, err)
	}
	st, err := os.Stat(canon)
	if err != nil {
		return nil, fmt.Errorf("Failed to inspect exec file %s: %w", canon, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a file", canon)
	}
	c.ExecFile, c.ExecName = canon, filepath.Base(canon)
	for _, n := range []string{"uid", "gid"} {
		s, _ := one(n)
		v, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("Invalid %s: %s", n, s)
		}
		if n == "uid" {
			c.UID = uint32(v)
		} else {
			c.GID = uint32(v)
		}
	}
	base, ok := one("chroot-base-dir")
	if !ok {
		base = DefaultChrootBase
	}
	cb, err := filepath.EvalSymlinks(base)
	if err == nil {
		cb, err = filepath.Abs(cb)
	}
	if err != nil {
		return nil, fmt.Errorf("Failed to canonicalize path %s: %w", base, err)
	}
	if st, err := os.Stat(cb); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", cb)
	}
	c.ChrootBase = cb
	c.Netns, _ = one("netns")
	_, c.Daemonize = vals["daemonize"]
	_, c.NewPidNs = vals["new-pid-ns"]
	c.CgroupVersion = 1
	if v, ok := one("cgroup-version"); ok {
		switch v {
		case "1":
		case "2":
			c.CgroupVersion = 2
		default:
			return nil, fmt.Errorf("Invalid cgroup version: %s", v)
		}
	}
	c.ParentCgroup = c.ExecName
	if p, ok := one("parent-cgroup"); ok {
		if err := validParentCgroup(p); err != nil {
			return nil, err
		}
		c.ParentCgroup = filepath.Clean(p)
	}
	for _, raw := range vals["cgroup"] {
		cv, err := parseCgroupValue(raw)
		if err != nil {
			return nil, err
		}
		c.Cgroups = append(c.Cgroups, cv)
	}
	for _, raw := range vals["resource-limit"] {
		k, v, ok := strings.Cut(raw, "=")
		if !ok || k == "" || v == "" {
			return nil, fmt.Errorf("Invalid resource argument: %s", raw)
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("Invalid resource limit value %s: %w", raw, err)
		}
		switch k {
		case "fsize":
			c.FsizeLimit = &n
		case "no-file":
			c.NoFileLimit = n
		default:
			return nil, fmt.Errorf("Invalid resource argument: %s", raw)
		}
	}
	return c, nil
}

// ValidID reports whether id meets the jailer's and Firecracker's instance
// id rule: 1 to 64 bytes, each an ASCII letter, digit or '-'.
func ValidID(id string) error {
	if len(id) == 0 || len(id) > 64 {
		return fmt.Errorf("invalid len %d: the id must have 1 to 64 characters", len(id))
	}
	for _, r := range id {
		if !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return fmt.Errorf("invalid char (%c): only alphanumeric characters and hyphens are allowed", r)
		}
	}
	return nil
}

func validParentCgroup(p string) error {
	if p == "" || filepath.IsAbs(p) {
		return fmt.Errorf("Invalid parent cgroup path: %q", p)
	}
	for _, comp := range strings.Split(p, "/") {
		if comp == "." || comp == ".." {
			return fmt.Errorf("Invalid parent cgroup path: %q", p)
		}
	}
	return nil
}

func parseCgroupValue(raw string) (CgroupValue, error) {
	file, value, ok := strings.Cut(raw, "=")
	bad := fmt.Errorf("Invalid format for cgroups: %s", raw)
	if !ok || file == "" || value == "" || strings.ContainsAny(file, "/") || file == "." || file == ".." {
		return CgroupValue{}, bad
	}
	ctrl, prop, ok := strings.Cut(file, ".")
	if !ok || ctrl == "" || prop == "" {
		return CgroupValue{}, bad
	}
	return CgroupValue{File: file, Controller: ctrl, Value: value}, nil
}

package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// DefaultConfigPath is where vmm-daemon looks for its configuration when
// --config is not given.
const DefaultConfigPath = "/etc/firecracker-vmm/config.toml"

// maxSocketPath is the longest unix socket path (sun_path minus its NUL).
const maxSocketPath = 107

// Config is the daemon's configuration: the TOML file of
// docs/config.example.toml, with defaults for every key the file leaves out.
type Config struct {
	Firecracker FirecrackerConfig `toml:"firecracker"`
	Network     NetworkConfig     `toml:"network"`
	GRPC        GRPCConfig        `toml:"grpc"`
	Defaults    DefaultsConfig    `toml:"defaults"`
	Limits      LimitsConfig      `toml:"limits"`
	Daemon      DaemonConfig      `toml:"daemon"`

	// Path is the file the configuration was read from, or the default
	// path that did not exist.
	Path string `toml:"-"`
	// FileMissing reports that the default config file did not exist and
	// every key has its default.
	FileMissing bool `toml:"-"`
}

// FirecrackerConfig is the [firecracker] section: the binary, the data
// directory and the options of every Firecracker process.
type FirecrackerConfig struct {
	// Binary is the firecracker executable: an absolute path, or a bare
	// name looked up in PATH.
	Binary string `toml:"binary"`
	// DataDir holds kernels/, images/, sandboxes/ and snapshots/.
	DataDir string `toml:"data_dir"`
	// LogLevel is Firecracker's --level.
	LogLevel              string `toml:"log_level"`
	NoSeccomp             bool   `toml:"no_seccomp"`
	SeccompFilter         string `toml:"seccomp_filter"`
	HTTPAPIMaxPayloadSize int64  `toml:"http_api_max_payload_size"`
	MMDSSizeLimit         int64  `toml:"mmds_size_limit"`
	// SocketTimeoutSecs bounds the wait for a new VMM's API socket.
	SocketTimeoutSecs int `toml:"socket_timeout_secs"`
	// Jailer is the [firecracker.jailer] section; nil when absent.
	Jailer *JailerConfig `toml:"jailer"`
}

// JailerConfig is the [firecracker.jailer] section: when present, every
// sandbox's Firecracker is started through the jailer.
type JailerConfig struct {
	Binary         string   `toml:"binary"`
	UID            int64    `toml:"uid"`
	GID            int64    `toml:"gid"`
	ChrootBaseDir  string   `toml:"chroot_base_dir"`
	Netns          string   `toml:"netns"`
	NewPIDNS       bool     `toml:"new_pid_ns"`
	CgroupVersion  string   `toml:"cgroup_version"`
	ParentCgroup   string   `toml:"parent_cgroup"`
	ResourceLimits []string `toml:"resource_limits"`
}

// NetworkConfig is the [network] section: the host bridge and the address
// pool of the sandboxes (see internal/network for the design).
type NetworkConfig struct {
	// Enabled gives every sandbox a NIC in its own network namespace (needs
	// root). When false, sandboxes have no network.
	Enabled bool `toml:"enabled"`
	// AllowInterSandbox lets sandboxes reach each other.
	AllowInterSandbox bool `toml:"allow_inter_sandbox"`
	// Bridge is the host bridge the sandboxes' veths join.
	Bridge string `toml:"bridge"`
	// CIDR is the sandbox network (IPv4).
	CIDR string `toml:"cidr"`
	// Gateway is the bridge's address inside CIDR (default: its first host).
	Gateway string   `toml:"gateway"`
	DNS     []string `toml:"dns"`
}

// GRPCConfig is the [grpc] section: where the API listens.
type GRPCConfig struct {
	// UnixSocket is the path of the API's unix socket (mode 0660).
	UnixSocket string `toml:"unix_socket"`
	// TCPAddr is host:port of an optional TCP listener; empty disables it.
	TCPAddr string `toml:"tcp_addr"`
	// TLSCert, TLSKey and TLSClientCA configure mutual TLS on TCP.
	TLSCert     string `toml:"tls_cert"`
	TLSKey      string `toml:"tls_key"`
	TLSClientCA string `toml:"tls_client_ca"`
	// TCPInsecure allows TCP without TLS (anyone who can connect controls
	// the daemon).
	TCPInsecure bool `toml:"tcp_insecure"`
	// SocketGroup (name or numeric gid) becomes the socket's group.
	SocketGroup string `toml:"socket_group"`
}

// DefaultsConfig is the [defaults] section: values for what a create
// request leaves out.
type DefaultsConfig struct {
	VCPUs           int    `toml:"vcpus"`
	MemoryMiB       int    `toml:"memory_mib"`
	Kernel          string `toml:"kernel"`
	Rootfs          string `toml:"rootfs"`
	BootArgs        string `toml:"boot_args"`
	StopTimeoutSecs int    `toml:"stop_timeout_secs"`
}

// LimitsConfig is the [limits] section.
type LimitsConfig struct {
	MaxSandboxes int `toml:"max_sandboxes"`
	MaxVCPUs     int `toml:"max_vcpus"`
	MinMemoryMiB int `toml:"min_memory_mib"`
	MaxMemoryMiB int `toml:"max_memory_mib"`
	// AllowedDirs are directories, besides data_dir/kernels and
	// data_dir/images, that kernel, initrd and rootfs paths may resolve into.
	AllowedDirs []string `toml:"allowed_dirs"`
}

// DaemonConfig is the [daemon] section.
type DaemonConfig struct {
	// LogLevel is the daemon's own log level: debug, info, warn or error.
	LogLevel string `toml:"log_level"`
	// LogFormat is text or json.
	LogFormat           string `toml:"log_format"`
	ShutdownTimeoutSecs int    `toml:"shutdown_timeout_secs"`
	// OnShutdown is what the daemon does with the sandboxes when it exits:
	// "leave" them running for the next daemon to re-adopt, or "stop"
	// (and remove) them all.
	OnShutdown string `toml:"on_shutdown"`
}

// Default values of the keys (kernel, rootfs and gateway are derived; see
// DefaultConfig).
const (
	DefaultBinary          = "/usr/bin/firecracker"
	DefaultDataDir         = "/var/lib/firecracker-vmm"
	DefaultUnixSocket      = "/run/firecracker-vmm/vmm.sock"
	DefaultBootArgs        = "console=ttyS0 reboot=k panic=1 pci=off"
	DefaultKernelName      = "kernels/vmlinux"
	DefaultRootfsName      = "images/ubuntu-22.04.ext4"
	DefaultFirecrackerLog  = "Warning"
	DefaultShutdownTimeout = 30 * time.Second
)

// DefaultConfig returns the configuration of an empty file. Kernel and
// rootfs are derived from the data dir, and the gateway from the CIDR, by
// Load after the file and the flags are applied.
func DefaultConfig() Config {
	return Config{
		Firecracker: FirecrackerConfig{
			Binary:            DefaultBinary,
			DataDir:           DefaultDataDir,
			LogLevel:          DefaultFirecrackerLog,
			SocketTimeoutSecs: 5,
		},
		Network: NetworkConfig{
			Enabled: true,
			Bridge:  "fcvmm0",
			CIDR:    "172.20.0.0/16",
			DNS:     []string{"1.1.1.1", "8.8.8.8"},
		},
		GRPC: GRPCConfig{UnixSocket: DefaultUnixSocket},
		Defaults: DefaultsConfig{
			VCPUs:           1,
			MemoryMiB:       512,
			BootArgs:        DefaultBootArgs,
			StopTimeoutSecs: 10,
		},
		Limits: LimitsConfig{
			MaxSandboxes: 1000,
			MaxVCPUs:     vmm.MaxVCPUs,
			MinMemoryMiB: 128,
			MaxMemoryMiB: 32768,
		},
		Daemon: DaemonConfig{
			LogLevel:            "info",
			LogFormat:           "text",
			ShutdownTimeoutSecs: int(DefaultShutdownTimeout / time.Second),
			OnShutdown:          "leave",
		},
	}
}

// Overrides are command-line values that win over the file. Empty fields
// override nothing.
type Overrides struct {
	DataDir    string // --data-dir: [firecracker] data_dir
	UnixSocket string // --socket: [grpc] unix_socket
	TCPAddr    string // --tcp-addr: [grpc] tcp_addr
	LogLevel   string // --log-level: [daemon] log_level
}

// ConfigError lists every problem found in a configuration, each naming its
// key.
type ConfigError struct {
	// Path is the config file ("" when none was read).
	Path string
	// Problems are "key: what is wrong" sentences.
	Problems []string
}

// Error returns "config PATH: problem; problem; ..." on one line.
func (e *ConfigError) Error() string {
	return fmt.Sprintf("config %s: %s", e.Path, strings.Join(e.Problems, "; "))
}

// Load reads the TOML file at path (DefaultConfigPath when empty), applies
// the defaults and the overrides, derives what is derived and validates the
// result. A missing file is an error when explicit is true (the operator
// named it); otherwise every key takes its default and FileMissing is set.
// Unknown keys and bad values are errors naming the key.
func Load(path string, explicit bool, ov Overrides) (Config, error) {
	if path == "" {
		path = DefaultConfigPath
	}
	cfg := DefaultConfig()
	cfg.Path = path
	var unknown []string
	md, err := toml.DecodeFile(path, &cfg)
	switch {
	case err == nil:
		unknown = unknownKeys(md)
	case errors.Is(err, fs.ErrNotExist) && !explicit:
		cfg = DefaultConfig()
		cfg.Path, cfg.FileMissing = path, true
	case errors.Is(err, fs.ErrNotExist):
		return Config{}, fmt.Errorf("config %s: file does not exist", path)
	default:
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	flagOf := map[string]string{}
	if ov.DataDir != "" {
		cfg.Firecracker.DataDir, flagOf["firecracker.data_dir"] = ov.DataDir, "--data-dir"
	}
	if ov.UnixSocket != "" {
		cfg.GRPC.UnixSocket, flagOf["grpc.unix_socket"] = ov.UnixSocket, "--socket"
	}
	if ov.TCPAddr != "" {
		cfg.GRPC.TCPAddr, flagOf["grpc.tcp_addr"] = ov.TCPAddr, "--tcp-addr"
	}
	if ov.LogLevel != "" {
		cfg.Daemon.LogLevel, flagOf["daemon.log_level"] = ov.LogLevel, "--log-level"
	}
	cfg.derive()

	v := &validator{flagOf: flagOf}
	v.problems = append(v.problems, unknown...)
	cfg.validate(v)
	if len(v.problems) > 0 {
		return Config{}, &ConfigError{Path: path, Problems: v.problems}
	}
	return cfg, nil
}

// unknownKeys describes the keys of the file that match no field: one
// problem per unknown key or section (the keys inside an unknown section are
// not listed again).
func unknownKeys(md toml.MetaData) []string {
	undecoded := md.Undecoded()
	seen := map[string]bool{}
	for _, k := range undecoded {
		seen[k.String()] = true
	}
	var out []string
	for _, k := range undecoded {
		inUnknown := false
		for i := 1; i < len(k); i++ {
			if seen[k[:i].String()] {
				inUnknown = true
				break
			}
		}
		switch {
		case inUnknown:
		case md.Type(k...) == "Hash":
			out = append(out, fmt.Sprintf("unknown section [%s]", k))
		default:
			out = append(out, fmt.Sprintf("unknown key %q", k.String()))
		}
	}
	return out
}

// derive fills the values that default to others: kernel and rootfs from
// the data dir, the gateway from the CIDR.
func (c *Config) derive() {
	if c.Defaults.Kernel == "" && filepath.IsAbs(c.Firecracker.DataDir) {
		c.Defaults.Kernel = filepath.Join(c.Firecracker.DataDir, DefaultKernelName)
	}
	if c.Defaults.Rootfs == "" && filepath.IsAbs(c.Firecracker.DataDir) {
		c.Defaults.Rootfs = filepath.Join(c.Firecracker.DataDir, DefaultRootfsName)
	}
	if c.Network.Gateway == "" {
		if p, err := netip.ParsePrefix(c.Network.CIDR); err == nil && p.Addr().Is4() {
			c.Network.Gateway = p.Masked().Addr().Next().String()
		}
	}
}

// validator collects problems.
type validator struct {
	flagOf   map[string]string
	problems []string
}

// bad records a problem with key.
func (v *validator) bad(key, format string, args ...any) {
	if f := v.flagOf[key]; f != "" {
		key += " (" + f + ")"
	}
	v.problems = append(v.problems, key+": "+fmt.Sprintf(format, args...))
}

// absPath checks that value is a clean absolute path (empty allowed when
// optional).
func (v *validator) absPath(key, value string, optional bool) {
	switch {
	case value == "" && optional:
	case value == "":
		v.bad(key, "must not be empty")
	case !filepath.IsAbs(value):
		v.bad(key, "%q must be an absolute path", value)
	case strings.ContainsRune(value, 0):
		v.bad(key, "%q contains a NUL byte", value)
	}
}

// existingFile checks an optional absolute path that must name a regular
// file.
func (v *validator) existingFile(key, value string) {
	if value == "" {
		return
	}
	if !filepath.IsAbs(value) {
		v.bad(key, "%q must be an absolute path", value)
		return
	}
	fi, err := os.Stat(value)
	switch {
	case err != nil:
		v.bad(key, "%v", err)
	case !fi.Mode().IsRegular():
		v.bad(key, "%q is not a regular file", value)
	}
}

// intRange checks lo <= value <= hi.
func (v *validator) intRange(key string, value, lo, hi int64) {
	if value < lo || value > hi {
		v.bad(key, "%d is out of range %d..%d", value, lo, hi)
	}
}

// oneOf checks a case-insensitive enum.
func (v *validator) oneOf(key, value string, allowed ...string) {
	for _, a := range allowed {
		if strings.EqualFold(value, a) {
			return
		}
	}
	v.bad(key, "%q is not one of %s", value, strings.Join(allowed, ", "))
}

// validate records every problem of c.
func (c *Config) validate(v *validator) {
	fc := c.Firecracker
	switch {
	case fc.Binary == "":
		v.bad("firecracker.binary", "must not be empty")
	case !filepath.IsAbs(fc.Binary) && strings.ContainsRune(fc.Binary, '/'):
		v.bad("firecracker.binary", "%q must be an absolute path or a bare command name looked up in PATH", fc.Binary)
	}
	v.absPath("firecracker.data_dir", fc.DataDir, false)
	v.oneOf("firecracker.log_level", fc.LogLevel, "Error", "Warning", "Warn", "Info", "Debug", "Trace", "Off")
	v.existingFile("firecracker.seccomp_filter", fc.SeccompFilter)
	if fc.NoSeccomp && fc.SeccompFilter != "" {
		v.bad("firecracker.seccomp_filter", "cannot be combined with no_seccomp = true")
	}
	if fc.HTTPAPIMaxPayloadSize < 0 {
		v.bad("firecracker.http_api_max_payload_size", "%d must not be negative (0: Firecracker's default)", fc.HTTPAPIMaxPayloadSize)
	}
	if fc.MMDSSizeLimit < 0 {
		v.bad("firecracker.mmds_size_limit", "%d must not be negative (0: Firecracker's default)", fc.MMDSSizeLimit)
	}
	v.intRange("firecracker.socket_timeout_secs", int64(fc.SocketTimeoutSecs), 1, 300)
	if fc.Jailer != nil {
		fc.Jailer.validate(v)
	}

	c.Network.validate(v)
	c.GRPC.validate(v)

	l := c.Limits
	v.intRange("limits.max_sandboxes", int64(l.MaxSandboxes), 1, 1_000_000)
	v.intRange("limits.max_vcpus", int64(l.MaxVCPUs), 1, vmm.MaxVCPUs)
	v.intRange("limits.min_memory_mib", int64(l.MinMemoryMiB), 1, 1<<30)
	if l.MaxMemoryMiB < l.MinMemoryMiB {
		v.bad("limits.max_memory_mib", "%d is below limits.min_memory_mib (%d)", l.MaxMemoryMiB, l.MinMemoryMiB)
	}
	for i, d := range l.AllowedDirs {
		v.absPath(fmt.Sprintf("limits.allowed_dirs[%d]", i), d, false)
	}

	d := c.Defaults
	if d.VCPUs < 1 || d.VCPUs > l.MaxVCPUs {
		v.bad("defaults.vcpus", "%d is out of range 1..%d (limits.max_vcpus)", d.VCPUs, l.MaxVCPUs)
	}
	if d.MemoryMiB < l.MinMemoryMiB || d.MemoryMiB > l.MaxMemoryMiB {
		v.bad("defaults.memory_mib", "%d is out of range %d..%d (limits.min_memory_mib..limits.max_memory_mib)",
			d.MemoryMiB, l.MinMemoryMiB, l.MaxMemoryMiB)
	}
	v.absPath("defaults.kernel", d.Kernel, false)
	v.absPath("defaults.rootfs", d.Rootfs, false)
	switch {
	case len(d.BootArgs) > vmm.MaxBootArgs:
		v.bad("defaults.boot_args", "is %d bytes long; the limit is %d", len(d.BootArgs), vmm.MaxBootArgs)
	case strings.ContainsAny(d.BootArgs, "\x00\n\r"):
		v.bad("defaults.boot_args", "must not contain NUL or line breaks")
	}
	v.intRange("defaults.stop_timeout_secs", int64(d.StopTimeoutSecs), 1, 3600)

	v.oneOf("daemon.log_level", c.Daemon.LogLevel, "debug", "info", "warn", "error")
	v.oneOf("daemon.log_format", c.Daemon.LogFormat, "text", "json")
	v.intRange("daemon.shutdown_timeout_secs", int64(c.Daemon.ShutdownTimeoutSecs), 1, 3600)
	v.oneOf("daemon.on_shutdown", c.Daemon.OnShutdown, "leave", "stop")

	if fc.Jailer != nil && fc.Jailer.Netns != "" && c.Network.Enabled {
		v.bad("firecracker.jailer.netns", "%q: with [network] enabled every sandbox runs in a namespace of its own; leave netns empty", fc.Jailer.Netns)
	}
}

// validate checks the [firecracker.jailer] section.
func (j *JailerConfig) validate(v *validator) {
	v.absPath("firecracker.jailer.binary", j.Binary, false)
	if filepath.IsAbs(j.Binary) {
		if st, err := os.Stat(j.Binary); err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			v.bad("firecracker.jailer.binary", "%q is not an executable file", j.Binary)
		}
	}
	if filepath.IsAbs(j.ChrootBaseDir) {
		if st, err := os.Stat(j.ChrootBaseDir); err != nil || !st.IsDir() {
			v.bad("firecracker.jailer.chroot_base_dir", "%q must be an existing directory (the jailer does not create it)", j.ChrootBaseDir)
		}
	}
	v.intRange("firecracker.jailer.uid", j.UID, 0, 1<<32-2)
	v.intRange("firecracker.jailer.gid", j.GID, 0, 1<<32-2)
	v.absPath("firecracker.jailer.chroot_base_dir", j.ChrootBaseDir, false)
	v.absPath("firecracker.jailer.netns", j.Netns, true)
	if j.CgroupVersion != "" {
		v.oneOf("firecracker.jailer.cgroup_version", j.CgroupVersion, "1", "2")
	}
	if p := j.ParentCgroup; p != "" {
		if filepath.IsAbs(p) || slices.Contains(strings.Split(p, "/"), "..") || slices.Contains(strings.Split(p, "/"), ".") {
			v.bad("firecracker.jailer.parent_cgroup", "%q must be a relative path without '.' or '..'", p)
		}
	}
	for i, rl := range j.ResourceLimits {
		name, val, ok := strings.Cut(rl, "=")
		n, err := strconv.ParseUint(val, 10, 64)
		if !ok || (name != "fsize" && name != "no-file") || err != nil || n == 0 {
			v.bad(fmt.Sprintf("firecracker.jailer.resource_limits[%d]", i), "%q: want fsize=N or no-file=N with N > 0", rl)
		}
	}
}

// validate checks the [network] section.
func (n NetworkConfig) validate(v *validator) {
	if b := n.Bridge; b == "" || len(b) > 15 || b == "." || b == ".." || strings.ContainsAny(b, "/: \t\n\x00") {
		v.bad("network.bridge", "%q is not a valid interface name (1-15 bytes, no '/', ':' or spaces)", b)
	}
	p, err := netip.ParsePrefix(n.CIDR)
	switch {
	case err != nil:
		v.bad("network.cidr", "%q is not a CIDR prefix (like 172.20.0.0/16)", n.CIDR)
	case !p.Addr().Is4():
		v.bad("network.cidr", "%q: only IPv4 is supported", n.CIDR)
	case p != p.Masked():
		v.bad("network.cidr", "%q has host bits set; did you mean %s?", n.CIDR, p.Masked())
	case p.Bits() > 30:
		v.bad("network.cidr", "%q is too small: a /30 or larger is needed", n.CIDR)
	case p.Overlaps(network.GuestPrefix):
		v.bad("network.cidr", "%q overlaps %s, the guest-side network inside every sandbox namespace", n.CIDR, network.GuestPrefix)
	default:
		gw, err := netip.ParseAddr(n.Gateway)
		switch {
		case err != nil:
			v.bad("network.gateway", "%q is not an IP address", n.Gateway)
		case !p.Contains(gw):
			v.bad("network.gateway", "%s is not inside network.cidr %s", gw, p)
		case gw == p.Addr() || gw == lastAddr(p):
			v.bad("network.gateway", "%s is the network or broadcast address of %s", gw, p)
		}
	}
	for i, d := range n.DNS {
		if _, err := netip.ParseAddr(d); err != nil {
			v.bad(fmt.Sprintf("network.dns[%d]", i), "%q is not an IP address", d)
		}
	}
}

// lastAddr returns the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	n := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// validate checks the [grpc] section.
func (g GRPCConfig) validate(v *validator) {
	v.absPath("grpc.unix_socket", g.UnixSocket, false)
	if err := checkSocketPath(g.UnixSocket); err != nil && filepath.IsAbs(g.UnixSocket) {
		v.bad("grpc.unix_socket", "%v", err)
	}
	if g.TCPAddr != "" {
		host, port, err := net.SplitHostPort(g.TCPAddr)
		if err == nil {
			_, err = strconv.ParseUint(port, 10, 16)
		}
		if err != nil || strings.ContainsAny(host, " /") {
			v.bad("grpc.tcp_addr", "%q is not host:port (like 127.0.0.1:9090)", g.TCPAddr)
		}
	}
	v.existingFile("grpc.tls_cert", g.TLSCert)
	v.existingFile("grpc.tls_key", g.TLSKey)
	v.existingFile("grpc.tls_client_ca", g.TLSClientCA)
	var missing []string
	for _, k := range []struct{ key, val string }{
		{"grpc.tls_cert", g.TLSCert}, {"grpc.tls_key", g.TLSKey}, {"grpc.tls_client_ca", g.TLSClientCA},
	} {
		if k.val == "" {
			missing = append(missing, k.key)
		}
	}
	tlsSet := len(missing) == 0
	switch {
	case len(missing) > 0 && len(missing) < 3:
		v.bad("grpc", "mutual TLS needs tls_cert, tls_key and tls_client_ca together; missing %s", strings.Join(missing, ", "))
	case g.TCPInsecure && tlsSet:
		v.bad("grpc.tcp_insecure", "true contradicts the TLS settings; remove tcp_insecure to use mutual TLS")
	case g.TCPAddr != "" && !g.TCPInsecure && !tlsSet:
		v.bad("grpc.tcp_addr", "TCP is never served without authentication: set grpc.tls_cert, grpc.tls_key and "+
			"grpc.tls_client_ca (mutual TLS), or grpc.tcp_insecure = true to accept anyone who can connect")
	}
	if g.SocketGroup != "" {
		if _, err := lookupGroup(g.SocketGroup); err != nil {
			v.bad("grpc.socket_group", "%v", err)
		}
	}
}

// lookupGroup resolves a group name or numeric gid.
func lookupGroup(name string) (int, error) {
	if n, err := strconv.ParseUint(name, 10, 31); err == nil {
		return int(n), nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, fmt.Errorf("group %q: %w", name, err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("group %q: gid %q: %w", name, g.Gid, err)
	}
	return gid, nil
}

// checkSocketPath checks that a unix socket can be bound at path.
func checkSocketPath(path string) error {
	if len(path) > maxSocketPath {
		return fmt.Errorf("socket path %q is %d bytes long; unix socket paths are limited to %d bytes, choose a shorter one",
			path, len(path), maxSocketPath)
	}
	return nil
}

// StopTimeout is [defaults] stop_timeout_secs as a duration.
func (c Config) StopTimeout() time.Duration {
	return time.Duration(c.Defaults.StopTimeoutSecs) * time.Second
}

// ShutdownTimeout is [daemon] shutdown_timeout_secs as a duration.
func (c Config) ShutdownTimeout() time.Duration {
	return time.Duration(c.Daemon.ShutdownTimeoutSecs) * time.Second
}

// AllowedDirs are the directories request paths may resolve into:
// data_dir/kernels, data_dir/images and [limits] allowed_dirs.
func (c Config) AllowedDirs() []string {
	dirs := []string{filepath.Join(c.Firecracker.DataDir, "kernels"), filepath.Join(c.Firecracker.DataDir, "images")}
	for _, d := range c.Limits.AllowedDirs {
		if d = filepath.Clean(d); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// VMMConfig is the launcher configuration of [firecracker], with binary
// the resolved path of the executable.
func (c Config) VMMConfig(binary string) vmm.Config {
	fc := c.Firecracker
	return vmm.Config{
		Binary:                binary,
		LogLevel:              fc.LogLevel,
		NoSeccomp:             fc.NoSeccomp,
		SeccompFilter:         fc.SeccompFilter,
		HTTPAPIMaxPayloadSize: fc.HTTPAPIMaxPayloadSize,
		MMDSSizeLimit:         fc.MMDSSizeLimit,
		SocketTimeout:         time.Duration(fc.SocketTimeoutSecs) * time.Second,
	}
}

// NetworkManagerConfig converts the [network] section (already validated)
// into the network manager's configuration. The daemon's TCP API port, if
// any, is closed to sandboxes.
func (c *Config) NetworkManagerConfig(log *slog.Logger) network.Config {
	n := c.Network
	nc := network.Config{
		Bridge:            n.Bridge,
		CIDR:              netip.MustParsePrefix(n.CIDR),
		Gateway:           netip.MustParseAddr(n.Gateway),
		AllowInterSandbox: n.AllowInterSandbox,
		Logger:            log,
	}
	for _, d := range n.DNS {
		nc.DNS = append(nc.DNS, netip.MustParseAddr(d))
	}
	if j := c.Firecracker.Jailer; j != nil {
		// The jailed Firecracker runs as uid:gid and must be able to
		// attach the sandbox's TAP.
		nc.TAPOwner, nc.TAPGroup = int(j.UID), int(j.GID)
	}
	if c.GRPC.TCPAddr != "" {
		if _, port, err := net.SplitHostPort(c.GRPC.TCPAddr); err == nil {
			if p, err := strconv.ParseUint(port, 10, 16); err == nil && p != 0 {
				nc.DenyTCPPorts = []uint16{uint16(p)}
			}
		}
	}
	return nc
}

// JailerLauncherConfig converts the [firecracker.jailer] section (already
// validated; nil-safe) into the launcher's jailer options.
func (c *Config) JailerLauncherConfig() vmm.JailerConfig {
	j := c.Firecracker.Jailer
	if j == nil {
		return vmm.JailerConfig{}
	}
	return vmm.JailerConfig{
		Binary: j.Binary, UID: int(j.UID), GID: int(j.GID), ChrootBaseDir: j.ChrootBaseDir,
		NetNS: j.Netns, NewPIDNS: j.NewPIDNS, CgroupVersion: j.CgroupVersion,
		ParentCgroup: j.ParentCgroup, ResourceLimits: j.ResourceLimits,
	}
}

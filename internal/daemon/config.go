package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/server"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// DefaultConfigPath is where vmm-daemon looks for its configuration when
// --config is not given.
const DefaultConfigPath = "/etc/firecracker-vmm/config.toml"

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
	// MaxTotalVCPUs and MaxTotalMemoryMiB are the host-wide budget of all
	// live sandboxes together; 0 derives them from the host (HostBudget).
	MaxTotalVCPUs     int `toml:"max_total_vcpus"`
	MaxTotalMemoryMiB int `toml:"max_total_memory_mib"`
	// AllowedDirs are directories, besides data_dir/kernels and
	// data_dir/images (sandbox.KernelsDir and sandbox.ImagesDir), that
	// kernel, initrd and rootfs paths may resolve into.
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
	// MaxEventSubscribers caps the Events streams served at once, over
	// every listener; one more is refused with RESOURCE_EXHAUSTED.
	MaxEventSubscribers int `toml:"max_event_subscribers"`
}

// Default values of the keys that only the daemon has (kernel, rootfs and
// gateway are derived; see DefaultConfig). [defaults] and [limits] default
// to the sandbox manager's own defaults (sandbox.DefaultVCPUs and the
// rest), which are defined there only.
const (
	DefaultBinary  = "/usr/bin/firecracker"
	DefaultDataDir = "/var/lib/firecracker-vmm"
	// DefaultUnixSocket is also the CLI's default (client.DefaultSocket,
	// which cannot import this package); a test keeps the two equal.
	DefaultUnixSocket      = "/run/firecracker-vmm/vmm.sock"
	DefaultKernelName      = sandbox.KernelsDir + "/vmlinux"
	DefaultRootfsName      = sandbox.ImagesDir + "/ubuntu-22.04.ext4"
	DefaultFirecrackerLog  = "Warning"
	DefaultShutdownTimeout = 30 * time.Second
)

// DefaultConfig returns the configuration of an empty file. Kernel and
// rootfs are derived from the data dir, and the gateway from the CIDR, by
// Load after the file and the flags are applied. [defaults] and [limits]
// take the sandbox manager's defaults, so the two cannot differ.
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
			VCPUs:           sandbox.DefaultVCPUs,
			MemoryMiB:       sandbox.DefaultMemoryMiB,
			BootArgs:        sandbox.DefaultBootArgs,
			StopTimeoutSecs: int(sandbox.DefaultStopTimeout / time.Second),
		},
		Limits: LimitsConfig{
			MaxSandboxes: sandbox.DefaultMaxSandboxes,
			MaxVCPUs:     vmm.MaxVCPUs,
			MinMemoryMiB: sandbox.DefaultMinMemoryMiB,
			MaxMemoryMiB: sandbox.DefaultMaxMemoryMiB,
		},
		Daemon: DaemonConfig{
			LogLevel:            "info",
			LogFormat:           "text",
			ShutdownTimeoutSecs: int(DefaultShutdownTimeout / time.Second),
			OnShutdown:          "leave",
			MaxEventSubscribers: server.DefaultMaxEventSubscribers,
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

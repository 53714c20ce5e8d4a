package daemon

import (
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// StopTimeout is [defaults] stop_timeout_secs as a duration.
func (c Config) StopTimeout() time.Duration {
	return time.Duration(c.Defaults.StopTimeoutSecs) * time.Second
}

// ShutdownTimeout is [daemon] shutdown_timeout_secs as a duration.
func (c Config) ShutdownTimeout() time.Duration {
	return time.Duration(c.Daemon.ShutdownTimeoutSecs) * time.Second
}

// AllowedDirs are the directories request paths may resolve into:
// data_dir/kernels, data_dir/images and [limits] allowed_dirs, as
// sandbox.AllowedDirs computes them.
func (c Config) AllowedDirs() []string {
	return sandbox.AllowedDirs(c.Firecracker.DataDir, c.Limits.AllowedDirs)
}

// ManagerConfig is the sandbox manager configuration of [defaults],
// [limits], the data dir and [daemon] on_shutdown. The caller adds the
// collaborators (launcher, network, events, store, ...).
func (c Config) ManagerConfig() sandbox.Config {
	vcpus, memoryMiB := c.HostBudget()
	return sandbox.Config{
		DataDir:           c.Firecracker.DataDir,
		AllowedDirs:       c.AllowedDirs(),
		DefaultVCPUs:      c.Defaults.VCPUs,
		DefaultMemoryMiB:  c.Defaults.MemoryMiB,
		DefaultKernel:     c.Defaults.Kernel,
		DefaultRootfs:     c.Defaults.Rootfs,
		DefaultBootArgs:   c.Defaults.BootArgs,
		MaxVCPUs:          c.Limits.MaxVCPUs,
		MinMemoryMiB:      c.Limits.MinMemoryMiB,
		MaxMemoryMiB:      c.Limits.MaxMemoryMiB,
		MaxSandboxes:      c.Limits.MaxSandboxes,
		MaxTotalVCPUs:     vcpus,
		MaxTotalMemoryMiB: memoryMiB,
		StopTimeout:       c.StopTimeout(),
		OnShutdown:        sandbox.ShutdownMode(c.Daemon.OnShutdown),
	}
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

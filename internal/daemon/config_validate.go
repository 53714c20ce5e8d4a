package daemon

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// maxSocketPath is the longest unix socket path (sun_path minus its NUL).
const maxSocketPath = 107

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
	v.intRange("limits.max_total_vcpus", int64(l.MaxTotalVCPUs), 0, 1<<30)
	v.intRange("limits.max_total_memory_mib", int64(l.MaxTotalMemoryMiB), 0, 1<<40)
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
	v.intRange("daemon.max_event_subscribers", int64(c.Daemon.MaxEventSubscribers), 1, 100000)

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

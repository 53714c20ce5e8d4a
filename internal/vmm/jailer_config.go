package vmm

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Cgroup limit constants: a vCPU is one CPU period's worth of quota and the
// VMM gets this much memory on top of the guest's.
const (
	cgroupCPUPeriod      = 100000
	cgroupMemOverheadMiB = 64
)

// JailerConfig holds the jailer's own options (the [firecracker.jailer]
// section). The Firecracker binary it runs is the launcher's Config.Binary.
type JailerConfig struct {
	// Binary is the jailer binary (absolute or PATH-relative). Required.
	Binary string
	// UID and GID are the identity Firecracker runs as (>= 0).
	UID, GID int
	// ChrootBaseDir is the jailer's --chroot-base-dir (absolute, must
	// exist). Required.
	ChrootBaseDir string
	// NetNS is a network namespace path used when a launch names none.
	NetNS string
	// NewPIDNS passes --new-pid-ns: Firecracker becomes pid 1 of a new PID
	// namespace and is attached through its pid file.
	NewPIDNS bool
	// CgroupVersion is "1" or "2"; empty means "2".
	CgroupVersion string
	// ParentCgroup is --parent-cgroup (relative); empty means the jailer's
	// default, the exec file's name.
	ParentCgroup string
	// ResourceLimits are --resource-limit values (fsize=N, no-file=N).
	ResourceLimits []string
	// MountInfo is the mountinfo file cgroup mounts are found in; empty
	// means /proc/self/mountinfo (tests point it elsewhere).
	MountInfo string
}

// cgroupVersion returns the effective cgroup version.
func (c JailerConfig) cgroupVersion() string {
	if c.CgroupVersion == "" {
		return "2"
	}
	return c.CgroupVersion
}

// Validate checks the jailer options (not the file system).
func (c JailerConfig) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Binary == "" {
		add("jailer binary: required")
	}
	if c.UID < 0 || c.GID < 0 {
		add("jailer uid %d / gid %d: must not be negative", c.UID, c.GID)
	}
	if c.ChrootBaseDir == "" || !filepath.IsAbs(c.ChrootBaseDir) {
		add("chroot base dir %q: an absolute path is required", c.ChrootBaseDir)
	}
	if v := c.cgroupVersion(); v != "1" && v != "2" {
		add("cgroup version %q: want 1 or 2", c.CgroupVersion)
	}
	if c.ParentCgroup != "" {
		if err := validateRelPath(c.ParentCgroup); err != nil {
			add("parent cgroup %q: %v", c.ParentCgroup, err)
		}
	}
	for _, r := range c.ResourceLimits {
		k, v, ok := strings.Cut(r, "=")
		if _, err := strconv.ParseUint(v, 10, 64); !ok || (k != "fsize" && k != "no-file") || err != nil {
			add("resource limit %q: want fsize=N or no-file=N", r)
		}
	}
	return errors.Join(errs...)
}

// validateRelPath checks a relative path without "." or ".." components.
func validateRelPath(p string) error {
	if filepath.IsAbs(p) {
		return errors.New("must be relative")
	}
	for _, c := range strings.Split(p, "/") {
		if c == "" || c == "." || c == ".." {
			return errors.New(`must not contain empty, "." or ".." components`)
		}
	}
	return nil
}

// Limits are a VMM's resource limits, enforced through cgroups by the
// jailer. Zero fields are not limited.
type Limits struct {
	// VCPUs becomes a CPU quota of VCPUs whole CPUs.
	VCPUs int
	// MemoryMiB becomes a memory limit of MemoryMiB plus 64 MiB of VMM
	// overhead.
	MemoryMiB int
}

// CgroupSettings returns the --cgroup values (file=value) for limits under
// cgroup version "1" or "2":
//
//	v1: cpu.cfs_period_us=100000 cpu.cfs_quota_us=<vcpus*100000>
//	    memory.limit_in_bytes=<(mem+64) MiB>
//	v2: cpu.max=<vcpus*100000> 100000  memory.max=<(mem+64) MiB>
func CgroupSettings(version string, l Limits) []string {
	var out []string
	mem := strconv.FormatInt(int64(l.MemoryMiB+cgroupMemOverheadMiB)<<20, 10)
	quota := strconv.Itoa(l.VCPUs * cgroupCPUPeriod)
	if version == "1" {
		if l.VCPUs > 0 {
			out = append(out, "cpu.cfs_period_us="+strconv.Itoa(cgroupCPUPeriod), "cpu.cfs_quota_us="+quota)
		}
		if l.MemoryMiB > 0 {
			out = append(out, "memory.limit_in_bytes="+mem)
		}
		return out
	}
	if l.VCPUs > 0 {
		out = append(out, "cpu.max="+quota+" "+strconv.Itoa(cgroupCPUPeriod))
	}
	if l.MemoryMiB > 0 {
		out = append(out, "memory.max="+mem)
	}
	return out
}

// JailInvocation is the per-launch part of a jailer command line.
type JailInvocation struct {
	// ID is the jail id (--id), also Firecracker's instance id.
	ID string
	// ExecFile is the absolute path of the Firecracker binary.
	ExecFile string
	// NetNS is the network namespace to join (--netns); optional.
	NetNS string
	// Cgroups are --cgroup values (file=value).
	Cgroups []string
	// FirecrackerArgs follow "--"; they must not contain --id.
	FirecrackerArgs []string
}

// JailerArgs returns the jailer's arguments (without argv[0]) in this
// stable order:
//
//	--id ID --exec-file BIN --uid U --gid G --chroot-base-dir B
//	[--netns P] [--new-pid-ns] --cgroup-version V [--parent-cgroup P]
//	[--cgroup k=v]... [--resource-limit r]... -- FIRECRACKER-ARGS
//
// --daemonize is never used: the launcher keeps the process as its child.
func JailerArgs(cfg JailerConfig, inv JailInvocation) ([]string, error) {
	var errs []error
	if err := cfg.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := ValidateInstanceID(inv.ID); err != nil {
		errs = append(errs, err)
	}
	if !filepath.IsAbs(inv.ExecFile) {
		errs = append(errs, fmt.Errorf("exec file %q: an absolute path is required", inv.ExecFile))
	}
	for _, c := range inv.Cgroups {
		k, v, ok := strings.Cut(c, "=")
		if !ok || v == "" || k == "" || strings.Contains(k, "/") || k == "." || k == ".." {
			errs = append(errs, fmt.Errorf("cgroup setting %q: want file=value", c))
		}
	}
	if slices.Contains(inv.FirecrackerArgs, "--id") {
		errs = append(errs, errors.New("firecracker arguments must not contain --id under the jailer"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("vmm: jailer arguments: %w", err)
	}
	args := []string{
		"--id", inv.ID, "--exec-file", inv.ExecFile,
		"--uid", strconv.Itoa(cfg.UID), "--gid", strconv.Itoa(cfg.GID),
		"--chroot-base-dir", cfg.ChrootBaseDir,
	}
	if inv.NetNS != "" {
		args = append(args, "--netns", inv.NetNS)
	}
	if cfg.NewPIDNS {
		args = append(args, "--new-pid-ns")
	}
	args = append(args, "--cgroup-version", cfg.cgroupVersion())
	if cfg.ParentCgroup != "" {
		args = append(args, "--parent-cgroup", cfg.ParentCgroup)
	}
	for _, c := range inv.Cgroups {
		args = append(args, "--cgroup", c)
	}
	for _, r := range cfg.ResourceLimits {
		args = append(args, "--resource-limit", r)
	}
	args = append(args, "--")
	return append(args, inv.FirecrackerArgs...), nil
}

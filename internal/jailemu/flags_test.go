package jailemu

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "firecracker")
	if err := os.WriteFile(exe, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "fc-link")
	if err := os.Symlink(exe, link); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(dir, "base")
	if err := os.Mkdir(base, 0o755); err != nil {
		t.Fatal(err)
	}
	req := []string{"--id", "vm-1", "--exec-file", exe, "--uid", "123", "--gid", "456", "--chroot-base-dir", base}
	with := func(extra ...string) []string { return append(append([]string{}, req...), extra...) }

	tests := []struct {
		name    string
		args    []string
		wantErr string // substring; "" = success
		check   func(t *testing.T, c *Config)
	}{
		{name: "minimal with defaults", args: req, check: func(t *testing.T, c *Config) {
			if c.ID != "vm-1" || c.UID != 123 || c.GID != 456 || c.ExecName != "firecracker" || c.ChrootBase != base {
				t.Errorf("config %+v", c)
			}
			if c.CgroupVersion != 1 || c.ParentCgroup != "firecracker" || c.NoFileLimit != 2048 || c.FsizeLimit != nil {
				t.Errorf("defaults %+v", c)
			}
			if got := c.ChrootDir(); got != filepath.Join(base, "firecracker", "vm-1", "root") {
				t.Errorf("chroot %s", got)
			}
			if got := c.PidFile(); got != filepath.Join(base, "firecracker", "vm-1", "root", "firecracker.pid") {
				t.Errorf("pid file %s", got)
			}
		}},
		{name: "everything", args: with("--netns", "/run/netns/x", "--new-pid-ns", "--daemonize",
			"--cgroup-version", "2", "--parent-cgroup", "a/b", "--cgroup", "cpu.max=100000 100000",
			"--cgroup", "memory.max=1048576", "--resource-limit", "fsize=100", "--resource-limit", "no-file=64",
			"--", "--api-sock", "/run/firecracker.socket", "--level", "Debug"),
			check: func(t *testing.T, c *Config) {
				if c.Netns != "/run/netns/x" || !c.NewPidNs || !c.Daemonize || c.CgroupVersion != 2 || c.ParentCgroup != "a/b" {
					t.Errorf("config %+v", c)
				}
				want := []CgroupValue{{"cpu.max", "cpu", "100000 100000"}, {"memory.max", "memory", "1048576"}}
				if len(c.Cgroups) != 2 || c.Cgroups[0] != want[0] || c.Cgroups[1] != want[1] {
					t.Errorf("cgroups %+v", c.Cgroups)
				}
				if c.FsizeLimit == nil || *c.FsizeLimit != 100 || c.NoFileLimit != 64 {
					t.Errorf("limits %v %d", c.FsizeLimit, c.NoFileLimit)
				}
				if strings.Join(c.ExtraArgs, " ") != "--api-sock /run/firecracker.socket --level Debug" {
					t.Errorf("extra %q", c.ExtraArgs)
				}
			}},
		{name: "symlinked exec file uses the target's name", args: []string{"--id", "a", "--exec-file", link, "--uid", "1", "--gid", "1", "--chroot-base-dir", base},
			check: func(t *testing.T, c *Config) {
				if c.ExecFile != exe || c.ExecName != "firecracker" {
					t.Errorf("exec %s %s", c.ExecFile, c.ExecName)
				}
			}},
		{name: "help", args: []string{"--help", "--bogus"}, wantErr: errHelp.Error()},
		{name: "version", args: []string{"--version"}, wantErr: errVersion.Error()},
		{name: "missing id", args: []string{"--exec-file", exe, "--uid", "1", "--gid", "1"}, wantErr: "'--id' required"},
		{name: "missing uid", args: []string{"--id", "a", "--exec-file", exe, "--gid", "1"}, wantErr: "'--uid' required"},
		{name: "missing gid", args: []string{"--id", "a", "--exec-file", exe, "--uid", "1"}, wantErr: "'--gid' required"},
		{name: "id with underscore", args: []string{"--id", "a_b", "--exec-file", exe, "--uid", "1", "--gid", "1"}, wantErr: "Invalid instance ID"},
		{name: "id too long", args: []string{"--id", strings.Repeat("a", 65), "--exec-file", exe, "--uid", "1", "--gid", "1"}, wantErr: "Invalid instance ID"},
		{name: "empty id", args: []string{"--id", "", "--exec-file", exe, "--uid", "1", "--gid", "1"}, wantErr: "Invalid instance ID"},
		{name: "exec file missing", args: []string{"--id", "a", "--exec-file", filepath.Join(dir, "nope"), "--uid", "1", "--gid", "1"}, wantErr: "Failed to canonicalize"},
		{name: "exec file is a directory", args: []string{"--id", "a", "--exec-file", base, "--uid", "1", "--gid", "1"}, wantErr: "is not a file"},
		{name: "bad uid", args: []string{"--id", "a", "--exec-file", exe, "--uid", "-1", "--gid", "1"}, wantErr: "Invalid uid"},
		{name: "uid too big", args: []string{"--id", "a", "--exec-file", exe, "--uid", "4294967296", "--gid", "1"}, wantErr: "Invalid uid"},
		{name: "chroot base missing", args: []string{"--id", "a", "--exec-file", exe, "--uid", "1", "--gid", "1", "--chroot-base-dir", filepath.Join(dir, "nope")}, wantErr: "Failed to canonicalize"},
		{name: "chroot base is a file", args: []string{"--id", "a", "--exec-file", exe, "--uid", "1", "--gid", "1", "--chroot-base-dir", exe}, wantErr: "is not a directory"},
		{name: "name=value form", args: []string{"--id=a"}, wantErr: "wasn't expected"},
		{name: "unknown flag", args: with("--bogus"), wantErr: "wasn't expected"},
		{name: "positional", args: with("extra"), wantErr: "wasn't expected"},
		{name: "duplicate", args: with("--uid", "5"), wantErr: "more than once"},
		{name: "missing value", args: with("--netns"), wantErr: "requires a value"},
		{name: "id after --", args: with("--", "--id", "x"), wantErr: "'--id' must not be given"},
		{name: "cgroup without =", args: with("--cgroup", "cpu.shares"), wantErr: "Invalid format for cgroups"},
		{name: "cgroup empty value", args: with("--cgroup", "cpu.shares="), wantErr: "Invalid format for cgroups"},
		{name: "cgroup path", args: with("--cgroup", "../cpu.shares=1"), wantErr: "Invalid format for cgroups"},
		{name: "cgroup no controller", args: with("--cgroup", "shares=1"), wantErr: "Invalid format for cgroups"},
		{name: "cgroup version 3", args: with("--cgroup-version", "3"), wantErr: "Invalid cgroup version"},
		{name: "parent cgroup absolute", args: with("--parent-cgroup", "/a"), wantErr: "Invalid parent cgroup"},
		{name: "parent cgroup dotdot", args: with("--parent-cgroup", "a/../b"), wantErr: "Invalid parent cgroup"},
		{name: "parent cgroup dot", args: with("--parent-cgroup", "./a"), wantErr: "Invalid parent cgroup"},
		{name: "resource unknown", args: with("--resource-limit", "cpu=1"), wantErr: "Invalid resource argument"},
		{name: "resource not a number", args: with("--resource-limit", "fsize=x"), wantErr: "Invalid resource limit value"},
		{name: "resource no value", args: with("--resource-limit", "no-file"), wantErr: "Invalid resource argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tt.check(t, c)
		})
	}
	if !errors.Is(func() error { _, err := Parse([]string{"--help"}); return err }(), errHelp) {
		t.Error("--help does not short-circuit")
	}
}

func TestReadMounts(t *testing.T) {
	const mi = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 30 0:36 / /sys/fs/cgroup/sys\040temd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`
	m, err := readMounts(strings.NewReader(mi))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"cpu": "/sys/fs/cgroup/cpu,cpuacct", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
		"memory": "/sys/fs/cgroup/memory", "name=systemd": "/sys/fs/cgroup/sys temd",
	}
	for k, v := range want {
		if m.v1[k] != v {
			t.Errorf("v1[%s] = %q, want %q", k, m.v1[k], v)
		}
	}
	if m.unified != "/sys/fs/cgroup/unified" {
		t.Errorf("unified = %q", m.unified)
	}
}

func TestFirecrackerEnv(t *testing.T) {
	got := firecrackerEnv([]string{"PATH=/bin", "FCEMU_SKIP_TAP=1", "HOME=/root", "FCEMU_FAULTS=x", "JAILEMU_STAGE=child"})
	if strings.Join(got, ",") != "FCEMU_SKIP_TAP=1,FCEMU_FAULTS=x" {
		t.Errorf("env %q", got)
	}
}

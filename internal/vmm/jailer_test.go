package vmm

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestJailerArgs(t *testing.T) {
	base := JailerConfig{Binary: "/usr/bin/jailer", UID: 1000, GID: 1001, ChrootBaseDir: "/srv/jailer"}
	fc := []string{"--api-sock", "/run/firecracker.socket", "--level", "Info"}
	tests := []struct {
		name    string
		cfg     func(*JailerConfig)
		inv     JailInvocation
		want    string
		wantErr string
	}{
		{
			name: "minimal, cgroup v2 by default",
			inv:  JailInvocation{ID: "abc", ExecFile: "/usr/bin/firecracker", FirecrackerArgs: fc},
			want: "--id abc --exec-file /usr/bin/firecracker --uid 1000 --gid 1001 --chroot-base-dir /srv/jailer " +
				"--cgroup-version 2 -- --api-sock /run/firecracker.socket --level Info",
		},
		{
			name: "everything",
			cfg: func(c *JailerConfig) {
				c.NewPIDNS, c.CgroupVersion, c.ParentCgroup = true, "1", "vmm/sandboxes"
				c.ResourceLimits = []string{"no-file=4096", "fsize=1048576"}
			},
			inv: JailInvocation{ID: "abc", ExecFile: "/usr/bin/firecracker", NetNS: "/run/netns/vmm-abc",
				Cgroups: CgroupSettings("1", Limits{VCPUs: 2, MemoryMiB: 128}), FirecrackerArgs: fc},
			want: "--id abc --exec-file /usr/bin/firecracker --uid 1000 --gid 1001 --chroot-base-dir /srv/jailer " +
				"--netns /run/netns/vmm-abc --new-pid-ns --cgroup-version 1 --parent-cgroup vmm/sandboxes " +
				"--cgroup cpu.cfs_period_us=100000 --cgroup cpu.cfs_quota_us=200000 --cgroup memory.limit_in_bytes=201326592 " +
				"--resource-limit no-file=4096 --resource-limit fsize=1048576 -- --api-sock /run/firecracker.socket --level Info",
		},
		{
			name: "config netns is not used by the builder",
			cfg:  func(c *JailerConfig) { c.NetNS = "/run/netns/x" },
			inv:  JailInvocation{ID: "a-1", ExecFile: "/fc"},
			want: "--id a-1 --exec-file /fc --uid 1000 --gid 1001 --chroot-base-dir /srv/jailer --cgroup-version 2 --",
		},
		{name: "bad id", inv: JailInvocation{ID: "a_b", ExecFile: "/fc"}, wantErr: "instance id"},
		{name: "relative exec", inv: JailInvocation{ID: "a", ExecFile: "fc"}, wantErr: "exec file"},
		{name: "--id after --", inv: JailInvocation{ID: "a", ExecFile: "/fc", FirecrackerArgs: []string{"--id", "a"}}, wantErr: "--id"},
		{name: "bad cgroup", inv: JailInvocation{ID: "a", ExecFile: "/fc", Cgroups: []string{"cpu.max"}}, wantErr: "cgroup setting"},
		{name: "bad cgroup path", inv: JailInvocation{ID: "a", ExecFile: "/fc", Cgroups: []string{"../x=1"}}, wantErr: "cgroup setting"},
		{name: "bad version", cfg: func(c *JailerConfig) { c.CgroupVersion = "3" }, inv: JailInvocation{ID: "a", ExecFile: "/fc"}, wantErr: "cgroup version"},
		{name: "absolute parent", cfg: func(c *JailerConfig) { c.ParentCgroup = "/x" }, inv: JailInvocation{ID: "a", ExecFile: "/fc"}, wantErr: "parent cgroup"},
		{name: "dotdot parent", cfg: func(c *JailerConfig) { c.ParentCgroup = "a/../b" }, inv: JailInvocation{ID: "a", ExecFile: "/fc"}, wantErr: "parent cgroup"},
		{name: "bad rlimit", cfg: func(c *JailerConfig) { c.ResourceLimits = []string{"nproc=1"} }, inv: JailInvocation{ID: "a", ExecFile: "/fc"}, wantErr: "resource limit"},
		{name: "relative base", cfg: func(c *JailerConfig) { c.ChrootBaseDir = "srv" }, inv: JailInvocation{ID: "a", ExecFile: "/fc"}, wantErr: "chroot base dir"},
		{name: "negative uid", cfg: func(c *JailerConfig) { c.UID = -1 }, inv: JailInvocation{ID: "a", ExecFile: "/fc"}, wantErr: "uid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			if tt.cfg != nil {
				tt.cfg(&cfg)
			}
			got, err := JailerArgs(cfg, tt.inv)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if g := strings.Join(got, " "); g != tt.want {
				t.Errorf("args:\n got %s\nwant %s", g, tt.want)
			}
			if slices.Contains(got, "--daemonize") {
				t.Error("--daemonize must never be used")
			}
		})
	}
}

func TestFirecrackerArgsWithoutID(t *testing.T) {
	got, err := buildArgs(Config{Binary: "fc", NoSeccomp: true}, Invocation{ID: "x", APISocket: JailAPISocket,
		LogPath: JailLogPath, MetricsPath: JailMetricsPath, LogLevel: "Debug"}, false)
	if err != nil {
		t.Fatal(err)
	}
	want := "--api-sock /run/firecracker.socket --level Debug --log-path /firecracker.log --metrics-path /firecracker.metrics --no-seccomp"
	if g := strings.Join(got, " "); g != want {
		t.Errorf("got %s\nwant %s", g, want)
	}
}

func TestCgroupSettings(t *testing.T) {
	tests := []struct {
		version string
		l       Limits
		want    []string
	}{
		{"1", Limits{VCPUs: 2, MemoryMiB: 256}, []string{"cpu.cfs_period_us=100000", "cpu.cfs_quota_us=200000", "memory.limit_in_bytes=335544320"}},
		{"2", Limits{VCPUs: 1, MemoryMiB: 128}, []string{"cpu.max=100000 100000", "memory.max=201326592"}},
		{"2", Limits{MemoryMiB: 64}, []string{"memory.max=134217728"}},
		{"1", Limits{VCPUs: 4}, []string{"cpu.cfs_period_us=100000", "cpu.cfs_quota_us=400000"}},
		{"1", Limits{}, nil},
		{"2", Limits{}, nil},
	}
	for _, tt := range tests {
		if got := CgroupSettings(tt.version, tt.l); !slices.Equal(got, tt.want) {
			t.Errorf("CgroupSettings(%s, %+v) = %q, want %q", tt.version, tt.l, got, tt.want)
		}
	}
}

func TestJailPaths(t *testing.T) {
	j := Jail{Root: "/srv/jailer/firecracker/abc/root"}
	m := j.Paths([]JailFile{{HostPath: "/var/lib/vmm/kernels/vmlinux", JailName: "vmlinux"}})
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "/srv/jailer/firecracker/abc/root/rootfs.ext4", want: "/rootfs.ext4"},
		{in: "/srv/jailer/firecracker/abc/root/run/firecracker.socket", want: "/run/firecracker.socket"},
		{in: "/srv/jailer/firecracker/abc/root/", want: "/"},
		{in: "/srv/jailer/firecracker/abc/root/a/../b", want: "/b"},
		{in: "/var/lib/vmm/kernels/vmlinux", want: "/vmlinux"},
		{in: "/var/lib/vmm/kernels/../kernels/vmlinux", want: "/vmlinux"},
		{in: "rootfs.ext4", want: "rootfs.ext4"},
		{in: "vsock.sock", want: "vsock.sock"},
		{in: "/srv/jailer/firecracker/abc/rootfs.ext4", wantErr: true},
		{in: "/srv/jailer/firecracker/abc/root/../x", wantErr: true},
		{in: "/srv/jailer/firecracker/abc/rootx/y", wantErr: true},
		{in: "/etc/passwd", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		got, err := m(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("map(%q) = %q, want an error", tt.in, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("map(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	if got := j.HostPath("/run/firecracker.socket"); got != "/srv/jailer/firecracker/abc/root/run/firecracker.socket" {
		t.Errorf("HostPath = %s", got)
	}
	if got := j.HostPath("vsock.sock"); got != "/srv/jailer/firecracker/abc/root/vsock.sock" {
		t.Errorf("HostPath = %s", got)
	}
}

const testMountInfo = `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
35 30 0:32 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

// fakeJailerFiles writes testMountInfo and an empty "firecracker" named
// my-fc into dir and returns their paths.
func fakeJailerFiles(t *testing.T, dir string) (mountinfo, fc string) {
	t.Helper()
	mountinfo, fc = filepath.Join(dir, "mountinfo"), filepath.Join(dir, "my-fc")
	if err := os.WriteFile(mountinfo, []byte(testMountInfo), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fc, nil, 0o755); err != nil {
		t.Fatal(err)
	}
	return mountinfo, fc
}

func TestJailLayoutAndCgroups(t *testing.T) {
	mi, fc := fakeJailerFiles(t, t.TempDir())
	l := func(version, parent string) *JailerLauncher {
		return &JailerLauncher{Config: Config{Binary: fc}, Jailer: JailerConfig{
			Binary: "/jailer", UID: 5, GID: 6, ChrootBaseDir: "/srv/j", CgroupVersion: version,
			ParentCgroup: parent, MountInfo: mi,
		}}
	}
	tests := []struct {
		name          string
		l             *JailerLauncher
		limits        Limits
		cgroups       []string
		cgroup        string
		wantErrSubstr string
	}{
		{name: "v1 both", l: l("1", ""), limits: Limits{VCPUs: 1, MemoryMiB: 128},
			cgroups: []string{"/sys/fs/cgroup/cpu,cpuacct/my-fc/abc", "/sys/fs/cgroup/memory/my-fc/abc"},
			cgroup:  "/sys/fs/cgroup/cpu,cpuacct/my-fc/abc"},
		{name: "v1 parent", l: l("1", "vmm"), limits: Limits{MemoryMiB: 128},
			cgroups: []string{"/sys/fs/cgroup/memory/vmm/abc"}, cgroup: "/sys/fs/cgroup/memory/vmm/abc"},
		{name: "v1 no limits", l: l("1", ""), cgroups: nil, cgroup: ""},
		{name: "v2", l: l("2", "vmm"), limits: Limits{VCPUs: 1},
			cgroups: []string{"/sys/fs/cgroup/unified/vmm/abc"}, cgroup: "/sys/fs/cgroup/unified/vmm/abc"},
		{name: "v2 no limits", l: l("", "vmm"), cgroups: nil, cgroup: "/sys/fs/cgroup/unified/vmm/abc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := tt.l.Jail("abc", tt.limits)
			if err != nil {
				t.Fatal(err)
			}
			if j.Dir != "/srv/j/my-fc/abc" || j.Root != "/srv/j/my-fc/abc/root" || j.UID != 5 || j.GID != 6 {
				t.Errorf("jail = %+v", j)
			}
			if !slices.Equal(j.Cgroups, tt.cgroups) || j.Cgroup != tt.cgroup {
				t.Errorf("cgroups = %q (%q), want %q (%q)", j.Cgroups, j.Cgroup, tt.cgroups, tt.cgroup)
			}
		})
	}
	if _, err := l("1", "").Jail("bad/id", Limits{}); err == nil {
		t.Error("a bad id was accepted")
	}
	if err := os.WriteFile(mi, []byte("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := l("1", "").Jail("abc", Limits{VCPUs: 1}); err == nil || !strings.Contains(err.Error(), "cpu controller") {
		t.Errorf("missing controller: err = %v", err)
	}
}

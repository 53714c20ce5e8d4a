package daemon

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/client"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// writeConfig writes body to a config file in a temp dir and returns its path.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// touch creates an empty file and returns its path.
func touch(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadMissingDefaultFileGivesDefaults(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.toml")
	cfg, err := Load(missing, false, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.FileMissing || cfg.Path != missing {
		t.Errorf("FileMissing %v, Path %q", cfg.FileMissing, cfg.Path)
	}
	for name, c := range map[string]struct{ got, want any }{
		"binary":            {cfg.Firecracker.Binary, "/usr/bin/firecracker"},
		"data_dir":          {cfg.Firecracker.DataDir, "/var/lib/firecracker-vmm"},
		"fc log_level":      {cfg.Firecracker.LogLevel, "Warning"},
		"no_seccomp":        {cfg.Firecracker.NoSeccomp, false},
		"socket_timeout":    {cfg.Firecracker.SocketTimeoutSecs, 5},
		"jailer":            {cfg.Firecracker.Jailer == nil, true},
		"bridge":            {cfg.Network.Bridge, "fcvmm0"},
		"cidr":              {cfg.Network.CIDR, "172.20.0.0/16"},
		"gateway":           {cfg.Network.Gateway, "172.20.0.1"},
		"dns":               {strings.Join(cfg.Network.DNS, ","), "1.1.1.1,8.8.8.8"},
		"unix_socket":       {cfg.GRPC.UnixSocket, "/run/firecracker-vmm/vmm.sock"},
		"tcp_addr":          {cfg.GRPC.TCPAddr, ""},
		"tcp_insecure":      {cfg.GRPC.TCPInsecure, false},
		"vcpus":             {cfg.Defaults.VCPUs, 1},
		"memory":            {cfg.Defaults.MemoryMiB, 512},
		"kernel":            {cfg.Defaults.Kernel, "/var/lib/firecracker-vmm/kernels/vmlinux"},
		"rootfs":            {cfg.Defaults.Rootfs, "/var/lib/firecracker-vmm/images/ubuntu-22.04.ext4"},
		"boot_args":         {cfg.Defaults.BootArgs, "console=ttyS0 reboot=k panic=1 pci=off"},
		"stop_timeout":      {cfg.StopTimeout(), 10 * time.Second},
		"max_sandboxes":     {cfg.Limits.MaxSandboxes, 1000},
		"max_vcpus":         {cfg.Limits.MaxVCPUs, 32},
		"min_memory":        {cfg.Limits.MinMemoryMiB, 128},
		"max_memory":        {cfg.Limits.MaxMemoryMiB, 32768},
		"allowed_dirs":      {len(cfg.Limits.AllowedDirs), 0},
		"daemon log_level":  {cfg.Daemon.LogLevel, "info"},
		"log_format":        {cfg.Daemon.LogFormat, "text"},
		"shutdown_timeout":  {cfg.ShutdownTimeout(), 30 * time.Second},
		"allowed (derived)": {strings.Join(cfg.AllowedDirs(), ","), "/var/lib/firecracker-vmm/kernels,/var/lib/firecracker-vmm/images"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", name, c.got, c.want)
		}
	}
}

// The daemon's defaults are the sandbox manager's (and the CLI's socket),
// read through ManagerConfig the way Run hands them over, so that a copy
// of a default in either package cannot drift from the other.
func TestDefaultsAreTheManagers(t *testing.T) {
	cfg, err := Load(filepath.Join(t.TempDir(), "nope.toml"), false, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	mc := cfg.ManagerConfig()
	allowed := sandbox.AllowedDirs(DefaultDataDir, nil)
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"data dir", mc.DataDir, DefaultDataDir},
		{"vcpus", mc.DefaultVCPUs, sandbox.DefaultVCPUs},
		{"memory", mc.DefaultMemoryMiB, sandbox.DefaultMemoryMiB},
		{"boot args", mc.DefaultBootArgs, sandbox.DefaultBootArgs},
		{"stop timeout", mc.StopTimeout, sandbox.DefaultStopTimeout},
		{"max vcpus", mc.MaxVCPUs, vmm.MaxVCPUs},
		{"min memory", mc.MinMemoryMiB, sandbox.DefaultMinMemoryMiB},
		{"max memory", mc.MaxMemoryMiB, sandbox.DefaultMaxMemoryMiB},
		{"max sandboxes", mc.MaxSandboxes, sandbox.DefaultMaxSandboxes},
		{"allowed dirs", strings.Join(mc.AllowedDirs, ","), strings.Join(allowed, ",")},
		{"kernel in the kernels dir", filepath.Dir(mc.DefaultKernel), allowed[0]},
		{"rootfs in the images dir", filepath.Dir(mc.DefaultRootfs), allowed[1]},
		{"on shutdown", mc.OnShutdown, sandbox.ShutdownLeave},
		{"unix socket", cfg.GRPC.UnixSocket, client.DefaultSocket},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestLoadExplicitMissingFileIsAnError(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.toml")
	_, err := Load(missing, true, Overrides{})
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("err = %v", err)
	}
}

func TestLoadEmptyFileEqualsDefaults(t *testing.T) {
	a, err := Load(writeConfig(t, "# nothing\n"), true, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Load(filepath.Join(t.TempDir(), "nope.toml"), false, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	a.Path, b.Path, b.FileMissing = "", "", false
	if !reflect.DeepEqual(a, b) {
		t.Errorf("empty file %+v\n!= defaults %+v", a, b)
	}
}

// The example file documents every key with its default value.
func TestExampleFileIsCompleteAndDefault(t *testing.T) {
	const example = "../../docs/config.example.toml"
	got, err := Load(example, true, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := Load(filepath.Join(t.TempDir(), "nope.toml"), false, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	got.Path, want.Path, want.FileMissing = "", "", false
	// An explicit empty list decodes as empty, not nil.
	if len(got.Limits.AllowedDirs) == 0 {
		got.Limits.AllowedDirs = nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("example %+v\n!= defaults %+v", got, want)
	}
	text, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	var walk func(reflect.Type)
	walk = func(typ reflect.Type) {
		for f := range typ.Fields() {
			tag := f.Tag.Get("toml")
			if tag == "" || tag == "-" {
				continue
			}
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				if !strings.Contains(string(text), "["+tag+"]") && !strings.Contains(string(text), "."+tag+"]") {
					missing = append(missing, "["+tag+"]")
				}
				walk(ft)
				continue
			}
			if !strings.Contains(string(text), "\n"+tag+" ") && !strings.Contains(string(text), "# "+tag+" ") {
				missing = append(missing, tag)
			}
		}
	}
	walk(reflect.TypeFor[Config]())
	if len(missing) > 0 {
		t.Errorf("docs/config.example.toml lacks %v", missing)
	}
}

func TestLoadHonoursEveryKey(t *testing.T) {
	dir := t.TempDir()
	seccomp := touch(t, dir, "filter.bpf")
	cert, key, ca := touch(t, dir, "c.pem"), touch(t, dir, "k.pem"), touch(t, dir, "ca.pem")
	body := `
[firecracker]
binary = "/opt/fc/firecracker"
data_dir = "/srv/vmm"
log_level = "debug"
no_seccomp = false
seccomp_filter = "` + seccomp + `"
http_api_max_payload_size = 102400
mmds_size_limit = 65536
socket_timeout_secs = 7

[network]
enabled = false
allow_inter_sandbox = true
bridge = "br-sbx"
cidr = "10.9.0.0/24"
gateway = "10.9.0.254"
dns = ["9.9.9.9"]

[grpc]
unix_socket = "/run/x/vmm.sock"
tcp_addr = "127.0.0.1:9443"
tls_cert = "` + cert + `"
tls_key = "` + key + `"
tls_client_ca = "` + ca + `"
tcp_insecure = false
socket_group = "0"

[defaults]
vcpus = 4
memory_mib = 2048
kernel = "/srv/k/vmlinux-6.1"
rootfs = "/srv/i/alpine.ext4"
boot_args = "console=ttyS0 quiet"
stop_timeout_secs = 3

[limits]
max_sandboxes = 7
max_vcpus = 8
min_memory_mib = 256
max_memory_mib = 4096
allowed_dirs = ["/srv/k", "/srv/i"]

[daemon]
log_level = "WARN"
log_format = "json"
shutdown_timeout_secs = 12
on_shutdown = "stop"
max_event_subscribers = 9
`
	cfg, err := Load(writeConfig(t, body), true, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Firecracker: FirecrackerConfig{
			Binary: "/opt/fc/firecracker", DataDir: "/srv/vmm", LogLevel: "debug", SeccompFilter: seccomp,
			HTTPAPIMaxPayloadSize: 102400, MMDSSizeLimit: 65536, SocketTimeoutSecs: 7,
		},
		Network: NetworkConfig{Enabled: false, AllowInterSandbox: true, Bridge: "br-sbx", CIDR: "10.9.0.0/24", Gateway: "10.9.0.254", DNS: []string{"9.9.9.9"}},
		GRPC: GRPCConfig{
			UnixSocket: "/run/x/vmm.sock", TCPAddr: "127.0.0.1:9443", TLSCert: cert, TLSKey: key, TLSClientCA: ca,
			SocketGroup: "0",
		},
		Defaults: DefaultsConfig{
			VCPUs: 4, MemoryMiB: 2048, Kernel: "/srv/k/vmlinux-6.1", Rootfs: "/srv/i/alpine.ext4",
			BootArgs: "console=ttyS0 quiet", StopTimeoutSecs: 3,
		},
		Limits: LimitsConfig{MaxSandboxes: 7, MaxVCPUs: 8, MinMemoryMiB: 256, MaxMemoryMiB: 4096, AllowedDirs: []string{"/srv/k", "/srv/i"}},
		Daemon: DaemonConfig{LogLevel: "WARN", LogFormat: "json", ShutdownTimeoutSecs: 12, OnShutdown: "stop", MaxEventSubscribers: 9},
		Path:   cfg.Path,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got  %+v\nwant %+v", cfg, want)
	}
	vc := cfg.VMMConfig("/opt/fc/firecracker")
	if vc.LogLevel != "debug" || vc.SeccompFilter != seccomp || vc.HTTPAPIMaxPayloadSize != 102400 ||
		vc.MMDSSizeLimit != 65536 || vc.SocketTimeout != 7*time.Second || vc.Binary != "/opt/fc/firecracker" {
		t.Errorf("VMMConfig = %+v", vc)
	}
	if err := vc.Validate(); err != nil {
		t.Errorf("VMMConfig invalid: %v", err)
	}
	if got := cfg.AllowedDirs(); !slices.Equal(got, []string{"/srv/vmm/kernels", "/srv/vmm/images", "/srv/k", "/srv/i"}) {
		t.Errorf("AllowedDirs = %v", got)
	}
	if cfg.StopTimeout() != 3*time.Second || cfg.ShutdownTimeout() != 12*time.Second {
		t.Errorf("timeouts %v %v", cfg.StopTimeout(), cfg.ShutdownTimeout())
	}
}

func TestLoadDerivesFromDataDir(t *testing.T) {
	cfg, err := Load(writeConfig(t, "[firecracker]\ndata_dir = \"/data/v\"\n[network]\ncidr = \"10.1.2.0/24\"\n"), true, Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Defaults.Kernel != "/data/v/kernels/vmlinux" || cfg.Defaults.Rootfs != "/data/v/images/ubuntu-22.04.ext4" {
		t.Errorf("kernel %q rootfs %q", cfg.Defaults.Kernel, cfg.Defaults.Rootfs)
	}
	if cfg.Network.Gateway != "10.1.2.1" {
		t.Errorf("gateway %q, want 10.1.2.1", cfg.Network.Gateway)
	}
	// An explicit kernel is kept; the flag's data dir drives the rootfs.
	cfg, err = Load(writeConfig(t, "[defaults]\nkernel = \"/k/vmlinux\"\n"), true, Overrides{DataDir: "/flag/dir"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Defaults.Kernel != "/k/vmlinux" || cfg.Defaults.Rootfs != "/flag/dir/images/ubuntu-22.04.ext4" || cfg.Firecracker.DataDir != "/flag/dir" {
		t.Errorf("kernel %q rootfs %q data %q", cfg.Defaults.Kernel, cfg.Defaults.Rootfs, cfg.Firecracker.DataDir)
	}
}

func TestLoadOverrides(t *testing.T) {
	p := writeConfig(t, "[grpc]\nunix_socket = \"/run/a.sock\"\ntcp_insecure = true\n[daemon]\nlog_level = \"error\"\n")
	cfg, err := Load(p, true, Overrides{DataDir: "/d", UnixSocket: "/tmp/b.sock", TCPAddr: "127.0.0.1:0", LogLevel: "debug"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Firecracker.DataDir != "/d" || cfg.GRPC.UnixSocket != "/tmp/b.sock" || cfg.GRPC.TCPAddr != "127.0.0.1:0" || cfg.Daemon.LogLevel != "debug" {
		t.Errorf("overrides not applied: %+v", cfg)
	}
	_, err = Load(p, true, Overrides{UnixSocket: "rel.sock"})
	if err == nil || !strings.Contains(err.Error(), "grpc.unix_socket (--socket)") {
		t.Errorf("bad flag value: %v", err)
	}
}

func TestLoadRejects(t *testing.T) {
	dir := t.TempDir()
	file := touch(t, dir, "f")
	long := "/tmp/" + strings.Repeat("s", 110)
	for _, tc := range []struct {
		name, body string
		want       []string // every substring must appear in the error
	}{
		{"unknown key", "[grpc]\ntcp_adr = \"x\"\n", []string{`unknown key "grpc.tcp_adr"`}},
		{"unknown section", "[grcp]\nunix_socket = \"/x\"\n", []string{`unknown section [grcp]`}},
		{"unknown top-level key", "verbose = true\n", []string{`unknown key "verbose"`}},
		{"syntax", "[grpc\n", []string{"toml: line"}},
		{"wrong type", "[defaults]\nvcpus = \"two\"\n", []string{"vcpus"}},
		{"empty binary", "[firecracker]\nbinary = \"\"\n", []string{"firecracker.binary", "empty"}},
		{"relative binary", "[firecracker]\nbinary = \"bin/fc\"\n", []string{"firecracker.binary"}},
		{"relative data dir", "[firecracker]\ndata_dir = \"var/lib\"\n", []string{"firecracker.data_dir", "absolute"}},
		{"fc log level", "[firecracker]\nlog_level = \"Loud\"\n", []string{"firecracker.log_level", `"Loud"`}},
		{"seccomp missing", "[firecracker]\nseccomp_filter = \"/nonexistent/f.bpf\"\n", []string{"firecracker.seccomp_filter"}},
		{"seccomp conflict", "[firecracker]\nno_seccomp = true\nseccomp_filter = \"" + file + "\"\n", []string{"firecracker.seccomp_filter", "no_seccomp"}},
		{"payload", "[firecracker]\nhttp_api_max_payload_size = -1\n", []string{"firecracker.http_api_max_payload_size"}},
		{"mmds", "[firecracker]\nmmds_size_limit = -1\n", []string{"firecracker.mmds_size_limit"}},
		{"socket timeout", "[firecracker]\nsocket_timeout_secs = 0\n", []string{"firecracker.socket_timeout_secs"}},
		{"jailer files missing", "[firecracker.jailer]\nbinary = \"/nonexistent/jailer\"\nuid = 1\ngid = 1\nchroot_base_dir = \"/nonexistent/jail\"\n",
			[]string{"firecracker.jailer.binary", "not an executable file", "firecracker.jailer.chroot_base_dir", "existing directory"}},
		{"jailer netns with networking", "[firecracker.jailer]\nbinary = \"/bin/true\"\nuid = 1\ngid = 1\nchroot_base_dir = \"/tmp\"\nnetns = \"/run/netns/x\"\n",
			[]string{"firecracker.jailer.netns", "leave netns empty"}},
		{"jailer values", "[firecracker.jailer]\nbinary = \"jailer\"\nuid = -1\ngid = 1\nchroot_base_dir = \"/srv\"\ncgroup_version = \"3\"\nparent_cgroup = \"../x\"\nresource_limits = [\"cpu=1\"]\n",
			[]string{"firecracker.jailer.binary", "firecracker.jailer.uid", "firecracker.jailer.cgroup_version",
				"firecracker.jailer.parent_cgroup", "firecracker.jailer.resource_limits[0]"}},
		{"jailer unknown key", "[firecracker.jailer]\nchroot = \"/x\"\n", []string{`unknown key "firecracker.jailer.chroot"`}},
		{"bridge", "[network]\nbridge = \"a-very-long-bridge-name\"\n", []string{"network.bridge"}},
		{"cidr", "[network]\ncidr = \"172.20.0.0\"\n", []string{"network.cidr"}},
		{"cidr host bits", "[network]\ncidr = \"172.20.0.1/16\"\n", []string{"network.cidr", "172.20.0.0/16"}},
		{"cidr v6", "[network]\ncidr = \"fd00::/64\"\n", []string{"network.cidr", "IPv4"}},
		{"gateway outside", "[network]\ngateway = \"10.0.0.1\"\n", []string{"network.gateway", "not inside"}},
		{"gateway network addr", "[network]\ngateway = \"172.20.0.0\"\n", []string{"network.gateway", "network or broadcast"}},
		{"gateway not ip", "[network]\ngateway = \"gw\"\n", []string{"network.gateway"}},
		{"cidr overlaps the guest network", "[network]\ncidr = \"172.16.0.0/12\"\ngateway = \"172.16.1.1\"\n", []string{"network.cidr", "172.16.0.0/30"}},
		{"dns", "[network]\ndns = [\"1.1.1.1\", \"dns.google\"]\n", []string{"network.dns[1]"}},
		{"relative socket", "[grpc]\nunix_socket = \"vmm.sock\"\n", []string{"grpc.unix_socket", "absolute"}},
		{"long socket", "[grpc]\nunix_socket = \"" + long + "\"\n", []string{"grpc.unix_socket", "107 bytes"}},
		{"tcp addr", "[grpc]\ntcp_addr = \"localhost\"\ntcp_insecure = true\n", []string{"grpc.tcp_addr", "host:port"}},
		{"tcp port", "[grpc]\ntcp_addr = \"127.0.0.1:99999\"\ntcp_insecure = true\n", []string{"grpc.tcp_addr"}},
		{"tcp without tls", "[grpc]\ntcp_addr = \"127.0.0.1:9090\"\n", []string{"grpc.tcp_addr", "never served without authentication"}},
		{"partial tls", "[grpc]\ntls_cert = \"" + file + "\"\n", []string{"grpc.tls_key", "grpc.tls_client_ca"}},
		{"tls file missing", "[grpc]\ntls_cert = \"/nonexistent/c\"\ntls_key = \"" + file + "\"\ntls_client_ca = \"" + file + "\"\n", []string{"grpc.tls_cert"}},
		{"tls and insecure", "[grpc]\ntcp_addr = \"127.0.0.1:1\"\ntcp_insecure = true\ntls_cert = \"" + file + "\"\ntls_key = \"" + file + "\"\ntls_client_ca = \"" + file + "\"\n",
			[]string{"grpc.tcp_insecure"}},
		{"socket group", "[grpc]\nsocket_group = \"no-such-group-xyz\"\n", []string{"grpc.socket_group"}},
		{"vcpus", "[defaults]\nvcpus = 0\n", []string{"defaults.vcpus"}},
		{"vcpus above limit", "[defaults]\nvcpus = 9\n[limits]\nmax_vcpus = 8\n", []string{"defaults.vcpus", "limits.max_vcpus"}},
		{"memory", "[defaults]\nmemory_mib = 64\n", []string{"defaults.memory_mib"}},
		{"kernel", "[defaults]\nkernel = \"vmlinux\"\n", []string{"defaults.kernel"}},
		{"rootfs", "[defaults]\nrootfs = \"r.ext4\"\n", []string{"defaults.rootfs"}},
		{"boot args", "[defaults]\nboot_args = \"a\\nb\"\n", []string{"defaults.boot_args"}},
		{"boot args long", "[defaults]\nboot_args = \"" + strings.Repeat("a", 2049) + "\"\n", []string{"defaults.boot_args", "2048"}},
		{"stop timeout", "[defaults]\nstop_timeout_secs = -1\n", []string{"defaults.stop_timeout_secs"}},
		{"max sandboxes", "[limits]\nmax_sandboxes = 0\n", []string{"limits.max_sandboxes"}},
		{"max vcpus", "[limits]\nmax_vcpus = 33\n", []string{"limits.max_vcpus"}},
		{"min memory", "[limits]\nmin_memory_mib = 0\n", []string{"limits.min_memory_mib"}},
		{"max memory", "[limits]\nmax_memory_mib = 100\n", []string{"limits.max_memory_mib"}},
		{"allowed dirs", "[limits]\nallowed_dirs = [\"/ok\", \"rel\"]\n", []string{"limits.allowed_dirs[1]"}},
		{"daemon log level", "[daemon]\nlog_level = \"trace\"\n", []string{"daemon.log_level"}},
		{"log format", "[daemon]\nlog_format = \"xml\"\n", []string{"daemon.log_format"}},
		{"shutdown timeout", "[daemon]\nshutdown_timeout_secs = 0\n", []string{"daemon.shutdown_timeout_secs"}},
		{"event subscribers", "[daemon]\nmax_event_subscribers = 0\n", []string{"daemon.max_event_subscribers"}},
		{"on shutdown", "[daemon]\non_shutdown = \"kill\"\n", []string{"daemon.on_shutdown"}},
		{"several", "[daemon]\nlog_format = \"xml\"\nlog_levl = \"x\"\n", []string{"daemon.log_format", `unknown key "daemon.log_levl"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, tc.body)
			_, err := Load(p, true, Overrides{})
			if err == nil {
				t.Fatalf("Load accepted:\n%s", tc.body)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "config "+p+": ") {
				t.Errorf("error does not start with the file: %v", msg)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error lacks %q: %v", w, msg)
				}
			}
		})
	}
}

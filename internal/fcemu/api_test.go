package fcemu_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const jsonPrefix = "An error occurred when deserializing the json body of a request: "

func TestJSONValidation(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	tests := []struct {
		name, method, path, body, want string
	}{
		{"unknown field", "PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"foo":1}`, jsonPrefix + "unknown field `foo`, expected one of `vcpu_count`, `mem_size_mib`, `smt`, `cpu_template`, `track_dirty_pages`, `huge_pages`"},
		{"missing field", "PUT", "/machine-config", `{"mem_size_mib":128}`, jsonPrefix + "missing field `vcpu_count`"},
		{"bad enum", "PUT", "/mmds/config", `{"network_interfaces":[],"version":"V3"}`, jsonPrefix + "unknown variant `V3`, expected `V1` or `V2`"},
		{"u8 overflow", "PUT", "/machine-config", `{"vcpu_count":256,"mem_size_mib":128}`, jsonPrefix + "invalid value: integer `256`, expected u8"},
		{"wrong type", "PUT", "/boot-source", `{"kernel_image_path":5}`, jsonPrefix + "invalid type: integer `5`, expected a string"},
		{"bad action", "PUT", "/actions", `{"action_type":"Reboot"}`, jsonPrefix + "unknown variant `Reboot`, expected one of `FlushMetrics`, `InstanceStart`, `SendCtrlAltDel`"},
		{"snapshot version field removed", "PUT", "/snapshot/create", `{"snapshot_path":"a","mem_file_path":"b","version":"1.0.0"}`, jsonPrefix + "unknown field `version`, expected one of `snapshot_type`, `snapshot_path`, `mem_file_path`"},
		{"token bucket ignores unknown", "PUT", "/entropy", `{"rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"extra":1}},"x":1}`, jsonPrefix + "unknown field `x`, expected `rate_limiter`"},
		{"empty patch machine-config", "PATCH", "/machine-config", `{}`, "Empty PATCH request."},
		{"unknown route", "PATCH", "/boot-source", `{}`, "Invalid request method and/or path: PATCH boot-source."},
		{"unknown resource", "GET", "/nope", ``, "Invalid request method and/or path: GET nope."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := p.call(tc.method, tc.path, tc.body)
			if r.status != 400 || !strings.HasPrefix(r.fault(), tc.want) {
				t.Fatalf("got %d %q, want prefix %q", r.status, r.fault(), tc.want)
			}
		})
	}
	// Metrics bodies ignore unknown fields.
	p.must(204, "PUT", "/metrics", `{"metrics_path":"`+filepath.Join(p.dir, "m")+`","whatever":true}`)
}

func TestResourceIDs(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{env: []string{"FCEMU_SKIP_TAP=1"}})
	disk := file(t, p.dir, "disk", 4096)
	p.expectFault("PUT", "/drives/a", fmt.Sprintf(`{"drive_id":"b","path_on_host":%q,"is_root_device":false}`, disk), "The id from the path does not match the id from the body!")
	p.expectFault("PUT", "/network-interfaces/a", `{"iface_id":"b","host_dev_name":"tap0"}`, "The id from the path [a] does not match the id from the body [b]!")
	p.expectFault("PUT", "/drives/my-disk", fmt.Sprintf(`{"drive_id":"my-disk","path_on_host":%q,"is_root_device":false}`, disk), "API Resource IDs can only contain alphanumeric characters and underscores.")
	p.expectFault("PUT", "/drives", fmt.Sprintf(`{"drive_id":"x","path_on_host":%q,"is_root_device":false}`, disk), "The ID cannot be empty.")
	// Extra trailing segments are ignored.
	p.must(204, "PUT", "/drives/my_disk/extra", fmt.Sprintf(`{"drive_id":"my_disk","path_on_host":%q,"is_root_device":false}`, disk))
}

func TestPreBootOnlyAfterStart(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	p.boot("-")
	dir := p.dir
	for _, c := range []struct{ method, path, body string }{
		{"PUT", "/boot-source", `{"kernel_image_path":"/x"}`},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"PATCH", "/machine-config", `{"vcpu_count":2}`},
		{"PUT", "/logger", `{"level":"Info"}`},
		{"PUT", "/metrics", `{"metrics_path":"` + dir + `/m"}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"` + dir + `/v"}`},
		{"PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":true}`},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/serial", `{}`},
		{"PUT", "/cpu-config", `{}`},
		{"PUT", "/mmds/config", `{"network_interfaces":["a"],"version":"V2"}`},
		{"PUT", "/hotplug/memory", `{"total_size_mib":1024}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"a","mem_file_path":"b"}`},
	} {
		p.expectFault(c.method, c.path, c.body, "The requested operation is not supported after starting the microVM.")
	}
	if s := p.state(); s != "Running" {
		t.Fatalf("state %q", s)
	}
}

func TestPostBootOnlyBeforeStart(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	for _, c := range []struct{ method, path, body string }{
		{"PATCH", "/vm", `{"state":"Paused"}`},
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`},
		{"PUT", "/actions", `{"action_type":"FlushMetrics"}`},
		{"PUT", "/snapshot/create", `{"snapshot_path":"a","mem_file_path":"b"}`},
		{"PATCH", "/drives/a", `{"drive_id":"a"}`},
		{"PATCH", "/network-interfaces/a", `{"iface_id":"a"}`},
		{"PATCH", "/balloon", `{"amount_mib":1}`},
		{"GET", "/balloon/statistics", ``},
		{"GET", "/hotplug/memory", ``},
		{"DELETE", "/drives/a", ``},
	} {
		p.expectFault(c.method, c.path, c.body, "The requested operation is not supported before starting the microVM.")
	}
}

func TestInstanceStartRules(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	p.expectFault("PUT", "/actions", `{"action_type":"InstanceStart"}`, "Start microvm error: Cannot start microvm without kernel configuration.")
	if s := p.state(); s != "Not started" {
		t.Fatalf("state after failed start %q", s)
	}
	p.expectFault("PUT", "/boot-source", `{"kernel_image_path":"/nonexistent/vmlinux"}`, "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)")
	p.expectFault("PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q,"boot_args":%q}`, file(t, p.dir, "k", 1), strings.Repeat("a", 2049)),
		"Boot source error: The kernel command line is invalid: Command line string is too large")
	r := p.call("PUT", "/drives/d", `{"drive_id":"d","path_on_host":"/nonexistent/disk","is_root_device":false}`)
	if r.status != 400 || !strings.Contains(r.fault(), "No such file or directory (os error 2)") || !strings.HasPrefix(r.fault(), "Drive config error: ") {
		t.Fatalf("missing drive: %d %q", r.status, r.fault())
	}
	p.boot("-")
	p.expectFault("PUT", "/actions", `{"action_type":"InstanceStart"}`, "The requested operation is not supported after starting the microVM.")
	if !strings.Contains(p.stdout.String(), "emulated guest ready") {
		t.Fatalf("no boot lines on the serial console: %q", p.stdout.String())
	}
}

func TestDeviceRules(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{env: []string{"FCEMU_SKIP_TAP=1"}})
	a, b := file(t, p.dir, "a", 4096), file(t, p.dir, "b", 4096)
	p.must(204, "PUT", "/drives/a", fmt.Sprintf(`{"drive_id":"a","path_on_host":%q,"is_root_device":true}`, a))
	p.expectFault("PUT", "/drives/b", fmt.Sprintf(`{"drive_id":"b","path_on_host":%q,"is_root_device":true}`, b), "Drive config error: A root block device already exists!")
	p.must(204, "PUT", "/drives/a", fmt.Sprintf(`{"drive_id":"a","path_on_host":%q,"is_root_device":true}`, b)) // replace
	p.expectFault("PUT", "/drives/c", fmt.Sprintf(`{"drive_id":"c","path_on_host":%q,"is_root_device":false,"socket":"/x"}`, b), "Drive config error: Unable to create the virtio block device: Invalid block config.")
	p.must(204, "PUT", "/network-interfaces/n1", `{"iface_id":"n1","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01"}`)
	p.expectFault("PUT", "/network-interfaces/n2", `{"iface_id":"n2","host_dev_name":"tap1","guest_mac":"06:00:00:00:00:01"}`, "Network config error: The MAC address is already in use: 06:00:00:00:00:01")
	p.expectFault("PUT", "/network-interfaces/n3", `{"iface_id":"n3","host_dev_name":"averyveryverylongtap"}`, "Network config error: Could not create the network device: Open tap device failed: Invalid interface name")
	p.expectFault("PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":128,"smt":true}`, "Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.")
	p.expectFault("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`, "Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.")
	p.must(204, "PUT", "/machine-config", `{"vcpu_count":32,"mem_size_mib":256,"smt":true,"cpu_template":"T2"}`)
	p.must(204, "PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`)
	if r := p.must(200, "GET", "/machine-config", ""); r.body != `{"cpu_template":"T2","huge_pages":"None","mem_size_mib":256,"smt":false,"track_dirty_pages":false,"vcpu_count":2}` {
		t.Fatalf("machine-config kept cpu_template? %s", r.body)
	}
	p.expectFault("PUT", "/balloon", `{"amount_mib":512,"deflate_on_oom":true}`, "Balloon config error: Amount of pages requested is too large.")
	p.must(204, "PUT", "/balloon", `{"amount_mib":200,"deflate_on_oom":true}`)
	p.expectFault("PATCH", "/machine-config", `{"mem_size_mib":128}`, "Machine config error: The memory size (MiB) is smaller than the previously set balloon device target size.")
	p.expectFault("PUT", "/mmds/config", `{"network_interfaces":[]}`, "MMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.")
	p.expectFault("PUT", "/mmds/config", `{"network_interfaces":["zz"]}`, "MMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.")
	p.expectFault("PUT", "/mmds/config", `{"network_interfaces":["n1"],"ipv4_address":"10.0.0.1"}`, "MMDS config error: The MMDS IPv4 address is not link local.")
	var cfg map[string]any
	_ = json.Unmarshal([]byte(p.must(200, "GET", "/vm/config", "").body), &cfg)
	for _, k := range []string{"balloon", "drives", "boot-source", "cpu-config", "logger", "machine-config", "metrics", "mmds-config", "network-interfaces", "vsock", "entropy", "pmem", "memory-hotplug"} {
		if _, ok := cfg[k]; !ok {
			t.Errorf("GET /vm/config lacks %q", k)
		}
	}
	if d := cfg["drives"].([]any); len(d) != 1 || d[0].(map[string]any)["path_on_host"] != b {
		t.Errorf("drives %v", d)
	}
}

// fdFlags returns the open flags of the process's fd pointing at path.
func fdFlags(t *testing.T, pid int, path string) (int64, bool) {
	t.Helper()
	ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, e := range ents {
		l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if l != path {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				var f int64
				fmt.Sscanf(strings.TrimSpace(v), "%o", &f)
				return f, true
			}
		}
	}
	return 0, false
}

func TestDriveOpenModes(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	ro, rw := file(t, p.dir, "ro.img", 4096), file(t, p.dir, "rw.img", 4096)
	p.must(204, "PUT", "/drives/ro", fmt.Sprintf(`{"drive_id":"ro","path_on_host":%q,"is_root_device":false,"is_read_only":true}`, ro))
	p.must(204, "PUT", "/drives/rw", fmt.Sprintf(`{"drive_id":"rw","path_on_host":%q,"is_root_device":false}`, rw))
	pid := p.cmd.Process.Pid
	for _, c := range []struct {
		path string
		mode int64
	}{{ro, int64(os.O_RDONLY)}, {rw, int64(os.O_RDWR)}} {
		f, found := fdFlags(t, pid, c.path)
		if !found {
			t.Fatalf("%s is not held open", c.path)
		}
		if f&3 != c.mode {
			t.Errorf("%s opened with access mode %d, want %d", c.path, f&3, c.mode)
		}
	}
}

func TestVsockSocket(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	v1, v2 := filepath.Join(p.dir, "v1.sock"), filepath.Join(p.dir, "v2.sock")
	p.must(204, "PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, v1))
	if fi, err := os.Lstat(v1); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("vsock socket not bound at PUT: %v", err)
	}
	p.must(204, "PUT", "/vsock", fmt.Sprintf(`{"guest_cid":4,"uds_path":%q}`, v2))
	if _, err := os.Lstat(v1); !os.IsNotExist(err) {
		t.Fatalf("old vsock socket not unlinked on re-PUT: %v", err)
	}
	occupied := file(t, p.dir, "occupied", 0)
	p.expectFault("PUT", "/vsock", fmt.Sprintf(`{"guest_cid":3,"uds_path":%q}`, occupied),
		"Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: Address in use (os error 98)")
}

func TestMMDS(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{args: []string{"--mmds-size-limit", "64"}, env: []string{"FCEMU_SKIP_TAP=1"}})
	p.expectFault("PATCH", "/mmds", `{"a":1}`, "MMDS error: The MMDS data store is not initialized.")
	if r := p.must(200, "GET", "/mmds", ""); r.body != "{}" {
		t.Fatalf("empty store %q", r.body)
	}
	p.must(204, "PUT", "/mmds", `{"a":{"b":1,"c":2}}`)
	p.must(204, "PATCH", "/mmds", `{"a":{"b":null,"d":3}}`)
	if r := p.must(200, "GET", "/mmds", ""); r.body != `{"a":{"c":2,"d":3}}` {
		t.Fatalf("merge patch: %s", r.body)
	}
	r := p.call("PUT", "/mmds", `{"k":"`+strings.Repeat("x", 80)+`"}`)
	if r.status != 413 || r.fault() != "MMDS limit exceeded error: The MMDS patch request doesn't fit." {
		t.Fatalf("size limit: %d %q", r.status, r.fault())
	}
	p.boot("-")
	p.expectFault("GET", "/mmds", "", "MMDS error: The MMDS data store is not initialized.")
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	p.boot("-")
	for _, c := range []struct{ state, want string }{{"Paused", "Paused"}, {"Paused", "Paused"}, {"Resumed", "Running"}, {"Resumed", "Running"}} {
		p.must(204, "PATCH", "/vm", `{"state":"`+c.state+`"}`)
		if s := p.state(); s != c.want {
			t.Fatalf("after %s: state %q, want %q", c.state, s, c.want)
		}
	}
}

func TestCtrlAltDel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		bootArgs string
		env      []string
		pause    bool
		exits    bool
	}{
		{"default boot args reboot", "-", nil, false, true},
		{"reboot=k reboots", "console=ttyS0 reboot=k", nil, false, true},
		{"no reboot=k halts", "console=ttyS0", nil, false, false},
		{"ignored by hung guest", "-", []string{"FCEMU_IGNORE_CTRL_ALT_DEL=1"}, false, false},
		{"paused reboots after resume", "-", nil, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := start(t, startOpts{env: append([]string{"FCEMU_SHUTDOWN_DELAY_MS=20"}, tc.env...)})
			p.boot(tc.bootArgs)
			if tc.pause {
				p.must(204, "PATCH", "/vm", `{"state":"Paused"}`)
			}
			p.must(204, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
			if tc.pause {
				if !p.alive(200 * time.Millisecond) {
					t.Fatal("paused VM rebooted before resume")
				}
				p.must(204, "PATCH", "/vm", `{"state":"Resumed"}`)
			}
			if !tc.exits {
				if !p.alive(300 * time.Millisecond) {
					t.Fatal("process exited although the guest should not reboot")
				}
				return
			}
			if code := p.exitCode(5 * time.Second); code != 0 {
				t.Fatalf("exit %d, want 0", code)
			}
		})
	}
}

func TestBootDelay(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{env: []string{"FCEMU_BOOT_DELAY_MS=300"}})
	t0 := time.Now()
	p.boot("-")
	if d := time.Since(t0); d < 300*time.Millisecond {
		t.Fatalf("InstanceStart answered after %v, want >= 300ms", d)
	}
}

func TestLogAndMetricsFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logf, metf := filepath.Join(dir, "log"), filepath.Join(dir, "metrics")
	garbage := strings.Repeat("G", 1<<16) + "TAIL"
	for _, f := range []string{logf, metf} {
		if err := os.WriteFile(f, []byte(garbage), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := start(t, startOpts{args: []string{"--log-path", logf, "--metrics-path", metf, "--show-level", "--id", "vm-7"}})
	p.boot("-")
	p.must(204, "PUT", "/actions", `{"action_type":"FlushMetrics"}`)
	p.must(204, "PATCH", "/vm", `{"state":"Paused"}`)
	l, _ := os.ReadFile(logf)
	if !strings.HasSuffix(string(l), "TAIL") || strings.HasPrefix(string(l), "G") {
		t.Fatalf("log file not overwritten from offset 0 without truncation")
	}
	if !strings.Contains(string(l), "[vm-7:fc_api:INFO] The API server received a PUT request") {
		t.Fatalf("log lines: %s", l[:400])
	}
	m, _ := os.ReadFile(metf)
	if !strings.HasSuffix(string(m), "TAIL") {
		t.Fatal("metrics file truncated")
	}
	lines := strings.Split(string(m), "\n")
	for _, line := range lines[:2] {
		if !strings.HasPrefix(line, `{"utc_timestamp_ms":`) {
			t.Fatalf("metrics line does not start with utc_timestamp_ms: %.80s", line)
		}
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatalf("metrics line is not JSON: %v", err)
		}
		for _, g := range []string{"api_server", "block", "net", "put_api_requests", "vmm", "vsock"} {
			if _, ok := obj[g]; !ok {
				t.Fatalf("metrics line lacks group %s", g)
			}
		}
	}
	var second map[string]map[string]float64
	_ = json.Unmarshal([]byte(lines[1]), &second)
	if second["put_api_requests"]["actions_count"] != 2 || second["put_api_requests"]["boot_source_count"] != 1 {
		t.Fatalf("put_api_requests not counted: %v", second["put_api_requests"])
	}
	p.expectFault("PUT", "/metrics", `{"metrics_path":"x"}`, "The requested operation is not supported after starting the microVM.")
}

func TestMetricsOnlyOnce(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	m := filepath.Join(p.dir, "m")
	p.must(204, "PUT", "/metrics", `{"metrics_path":"`+m+`"}`)
	p.expectFault("PUT", "/metrics", `{"metrics_path":"`+m+`"}`, "Metrics error: Cannot initialize the metrics system due to bad user input: Reinitialization of metrics not allowed.")
}

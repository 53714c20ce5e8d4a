package firecracker

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestModelJSON(t *testing.T) {
	rl := &RateLimiter{
		Bandwidth: &TokenBucket{Size: 1000, RefillTime: 100, OneTimeBurst: Int64(50)},
		Ops:       &TokenBucket{Size: 10, RefillTime: 1000},
	}
	const rlJSON = `{"bandwidth":{"size":1000,"refill_time":100,"one_time_burst":50},"ops":{"size":10,"refill_time":1000}}`
	tests := []struct {
		name string
		v    any
		want string
	}{
		{"MachineConfiguration/required", MachineConfiguration{VCPUCount: 2, MemSizeMiB: 256},
			`{"vcpu_count":2,"mem_size_mib":256}`},
		{"MachineConfiguration/all", MachineConfiguration{VCPUCount: 2, MemSizeMiB: 256, SMT: Bool(false), TrackDirtyPages: Bool(true), HugePages: HugePages2M},
			`{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"huge_pages":"2M"}`},
		{"BootSource/required", BootSource{KernelImagePath: "/k"}, `{"kernel_image_path":"/k"}`},
		{"BootSource/all", BootSource{KernelImagePath: "/k", InitrdPath: "/i", BootArgs: "console=ttyS0"},
			`{"kernel_image_path":"/k","initrd_path":"/i","boot_args":"console=ttyS0"}`},
		{"Drive/required", Drive{DriveID: "rootfs", IsRootDevice: true}, `{"drive_id":"rootfs","is_root_device":true}`},
		{"Drive/all", Drive{DriveID: "d1", PartUUID: "p", IsRootDevice: true, CacheType: CacheWriteback, IsReadOnly: Bool(false),
			PathOnHost: "/d", RateLimiter: rl, IOEngine: IOEngineAsync},
			`{"drive_id":"d1","partuuid":"p","is_root_device":true,"cache_type":"Writeback","is_read_only":false,"path_on_host":"/d","rate_limiter":` + rlJSON + `,"io_engine":"Async"}`},
		{"Drive/vhost-user", Drive{DriveID: "v", Socket: "/s"}, `{"drive_id":"v","is_root_device":false,"socket":"/s"}`},
		{"PartialDrive/required", PartialDrive{DriveID: "d"}, `{"drive_id":"d"}`},
		{"PartialDrive/all", PartialDrive{DriveID: "d", PathOnHost: "/x", RateLimiter: rl},
			`{"drive_id":"d","path_on_host":"/x","rate_limiter":` + rlJSON + `}`},
		{"NetworkInterface/required", NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"}, `{"iface_id":"eth0","host_dev_name":"tap0"}`},
		{"NetworkInterface/all", NetworkInterface{IfaceID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:00:00:00:01", MTU: 1500, RxRateLimiter: rl, TxRateLimiter: &RateLimiter{}},
			`{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:00:00:00:01","mtu":1500,"rx_rate_limiter":` + rlJSON + `,"tx_rate_limiter":{}}`},
		{"PartialNetworkInterface/required", PartialNetworkInterface{IfaceID: "eth0"}, `{"iface_id":"eth0"}`},
		{"PartialNetworkInterface/all", PartialNetworkInterface{IfaceID: "eth0", RxRateLimiter: rl, TxRateLimiter: rl},
			`{"iface_id":"eth0","rx_rate_limiter":` + rlJSON + `,"tx_rate_limiter":` + rlJSON + `}`},
		{"Vsock", Vsock{GuestCID: 3, UDSPath: "/v.sock"}, `{"guest_cid":3,"uds_path":"/v.sock"}`},
		{"Logger/required", Logger{}, `{}`},
		{"Logger/all", Logger{Level: LogLevelDebug, LogPath: "/l", ShowLevel: Bool(true), ShowLogOrigin: Bool(false), Module: "api_server"},
			`{"level":"Debug","log_path":"/l","show_level":true,"show_log_origin":false,"module":"api_server"}`},
		{"Metrics", Metrics{MetricsPath: "/m"}, `{"metrics_path":"/m"}`},
		{"MMDSConfig/required", MMDSConfig{NetworkInterfaces: []string{"eth0"}}, `{"network_interfaces":["eth0"]}`},
		{"MMDSConfig/all", MMDSConfig{Version: MMDSV2, NetworkInterfaces: []string{"eth0"}, IPv4Address: "169.254.169.250", IMDSCompat: Bool(true)},
			`{"version":"V2","network_interfaces":["eth0"],"ipv4_address":"169.254.169.250","imds_compat":true}`},
		{"Entropy/required", Entropy{}, `{}`},
		{"Entropy/all", Entropy{RateLimiter: rl}, `{"rate_limiter":` + rlJSON + `}`},
		{"Balloon/required", Balloon{AmountMiB: 0, DeflateOnOOM: false}, `{"amount_mib":0,"deflate_on_oom":false}`},
		{"Balloon/all", Balloon{AmountMiB: 64, DeflateOnOOM: true, StatsPollingIntervalS: Int(1), FreePageHinting: Bool(true), FreePageReporting: Bool(false)},
			`{"amount_mib":64,"deflate_on_oom":true,"stats_polling_interval_s":1,"free_page_hinting":true,"free_page_reporting":false}`},
		{"InstanceActionInfo", InstanceActionInfo{ActionType: ActionSendCtrlAltDel}, `{"action_type":"SendCtrlAltDel"}`},
		{"VM", VM{State: VMStatePaused}, `{"state":"Paused"}`},
		{"SnapshotCreateParams/required", SnapshotCreateParams{MemFilePath: "/mem", SnapshotPath: "/snap"},
			`{"mem_file_path":"/mem","snapshot_path":"/snap"}`},
		{"SnapshotCreateParams/all", SnapshotCreateParams{MemFilePath: "/mem", SnapshotPath: "/snap", SnapshotType: SnapshotDiff},
			`{"mem_file_path":"/mem","snapshot_path":"/snap","snapshot_type":"Diff"}`},
		{"SnapshotLoadParams/required", SnapshotLoadParams{SnapshotPath: "/snap", MemBackend: MemoryBackend{BackendType: MemoryBackendFile, BackendPath: "/mem"}},
			`{"snapshot_path":"/snap","mem_backend":{"backend_type":"File","backend_path":"/mem"}}`},
		{"SnapshotLoadParams/all", SnapshotLoadParams{
			SnapshotPath: "/snap", MemBackend: MemoryBackend{BackendType: MemoryBackendUffd, BackendPath: "/uffd.sock"},
			TrackDirtyPages: Bool(true), ResumeVM: Bool(true),
			NetworkOverrides: []NetworkOverride{{IfaceID: "eth0", HostDevName: "tap9"}},
			VsockOverride:    &VsockOverride{UDSPath: "/v2.sock"}, ClockRealtime: Bool(false),
		}, `{"snapshot_path":"/snap","mem_backend":{"backend_type":"Uffd","backend_path":"/uffd.sock"},"track_dirty_pages":true,"resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap9"}],"vsock_override":{"uds_path":"/v2.sock"},"clock_realtime":false}`},
	}
	deprecated := []string{"cpu_template", "vsock_id", "mem_file_path\":\"", "enable_diff_snapshots"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := json.Marshal(tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tt.want {
				t.Errorf("got  %s\nwant %s", b, tt.want)
			}
			if _, isCreate := tt.v.(SnapshotCreateParams); isCreate {
				return // mem_file_path is required (not deprecated) for create
			}
			for _, d := range deprecated {
				if strings.Contains(string(b), d) {
					t.Errorf("deprecated field %s sent: %s", d, b)
				}
			}
		})
	}
}

func TestDecodeResponses(t *testing.T) {
	var mc MachineConfiguration
	if err := json.Unmarshal([]byte(`{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None","cpu_template":"T2"}`), &mc); err != nil {
		t.Fatal(err)
	}
	if mc.VCPUCount != 1 || mc.MemSizeMiB != 128 || mc.SMT == nil || *mc.SMT || mc.HugePages != HugePagesNone {
		t.Errorf("machine config = %+v", mc)
	}
	var full FullVMConfiguration
	const body = `{"balloon":null,"drives":[{"drive_id":"rootfs","partuuid":null,"is_root_device":true,"cache_type":"Unsafe","is_read_only":false,"path_on_host":"/r","rate_limiter":null,"io_engine":"Sync","socket":null}],
	"boot-source":{"kernel_image_path":"/k","initrd_path":null,"boot_args":"a"},"cpu-config":null,"logger":null,
	"machine-config":{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},
	"metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":{"guest_cid":3,"uds_path":"/v"},"entropy":null,"pmem":[],"memory-hotplug":null}`
	if err := json.Unmarshal([]byte(body), &full); err != nil {
		t.Fatal(err)
	}
	if full.Balloon != nil || len(full.Drives) != 1 || full.Drives[0].PathOnHost != "/r" || full.BootSource.KernelImagePath != "/k" ||
		full.MachineConfig.VCPUCount != 2 || full.Vsock.GuestCID != 3 || full.Entropy != nil {
		t.Errorf("full config = %+v", full)
	}
}

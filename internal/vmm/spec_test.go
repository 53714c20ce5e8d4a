package vmm

import (
	"strings"
	"testing"

	"github.com/firecracker-vmm/firecracker-vmm/internal/firecracker"
)

func validSpec() VMSpec {
	return VMSpec{
		ID: "vm-1", Dir: "/tmp/vm-1", VCPUs: 2, MemoryMiB: 256, Kernel: "vmlinux",
		Drives: []DriveSpec{{ID: "rootfs", Path: "rootfs.ext4", Root: true, PartUUID: "abc"}, {ID: "data_1", Path: "d.img", ReadOnly: true}},
		NICs:   []NICSpec{{ID: "eth0", HostDevName: "tap0", GuestMAC: "06:00:ac:10:00:02", MTU: 1500}},
		Vsock:  &VsockSpec{CID: 3, UDSPath: "v.sock"},
	}
}

func TestVMSpecValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*VMSpec)
		want   []string // substrings that must all appear; none means valid
	}{
		{"valid", func(*VMSpec) {}, nil},
		{"smt even", func(s *VMSpec) { s.SMT = true; s.VCPUs = 4 }, nil},
		{"smt one", func(s *VMSpec) { s.SMT = true; s.VCPUs = 1 }, nil},
		{"32 vcpus", func(s *VMSpec) { s.VCPUs = 32 }, nil},
		{"no drives no nics", func(s *VMSpec) { s.Drives, s.NICs, s.Vsock = nil, nil, nil }, nil},
		{"bad id", func(s *VMSpec) { s.ID = "vm_1" }, []string{"instance id"}},
		{"no dir", func(s *VMSpec) { s.Dir = "" }, []string{"dir: required"}},
		{"zero vcpus", func(s *VMSpec) { s.VCPUs = 0 }, []string{"vcpus 0"}},
		{"33 vcpus", func(s *VMSpec) { s.VCPUs = 33 }, []string{"vcpus 33"}},
		{"smt odd", func(s *VMSpec) { s.SMT = true; s.VCPUs = 3 }, []string{"even with SMT"}},
		{"no memory", func(s *VMSpec) { s.MemoryMiB = 0 }, []string{"memory 0"}},
		{"no kernel", func(s *VMSpec) { s.Kernel = "" }, []string{"kernel: required"}},
		{"long boot args", func(s *VMSpec) { s.BootArgs = strings.Repeat("x", 2049) }, []string{"boot args"}},
		{"drive hyphen id", func(s *VMSpec) { s.Drives[1].ID = "data-1" }, []string{"only letters, digits and '_'"}},
		{"drive empty id", func(s *VMSpec) { s.Drives[1].ID = "" }, []string{"id required"}},
		{"drive dup id", func(s *VMSpec) { s.Drives[1].ID = "rootfs" }, []string{"duplicate id"}},
		{"drive no path", func(s *VMSpec) { s.Drives[1].Path = "" }, []string{"path required"}},
		{"two roots", func(s *VMSpec) { s.Drives[1].Root = true }, []string{"2 root drives"}},
		{"partuuid non-root", func(s *VMSpec) { s.Drives[1].PartUUID = "x" }, []string{"partuuid"}},
		{"bad cache", func(s *VMSpec) { s.Drives[0].CacheType = "Fast" }, []string{"cache type"}},
		{"bad engine", func(s *VMSpec) { s.Drives[0].IOEngine = "uring" }, []string{"io engine"}},
		{"negative limiter", func(s *VMSpec) {
			s.Drives[0].RateLimiter = &firecracker.RateLimiter{Ops: &firecracker.TokenBucket{Size: -1}}
		}, []string{"negative"}},
		{"nic bad id", func(s *VMSpec) { s.NICs[0].ID = "eth-0" }, []string{"network interface 0"}},
		{"nic no tap", func(s *VMSpec) { s.NICs[0].HostDevName = "" }, []string{"host device name required"}},
		{"nic long tap", func(s *VMSpec) { s.NICs[0].HostDevName = "tap0123456789abc" }, []string{"longer than 15"}},
		{"nic bad mac", func(s *VMSpec) { s.NICs[0].GuestMAC = "06:00:ac:10:00" }, []string{"guest MAC"}},
		{"nic dup mac", func(s *VMSpec) {
			s.NICs = append(s.NICs, NICSpec{ID: "eth1", HostDevName: "tap1", GuestMAC: "06:00:AC:10:00:02"})
		}, []string{"used twice"}},
		{"nic dup tap", func(s *VMSpec) { s.NICs = append(s.NICs, NICSpec{ID: "eth1", HostDevName: "tap0"}) }, []string{"host device \"tap0\" used twice"}},
		{"nic mtu", func(s *VMSpec) { s.NICs[0].MTU = 67 }, []string{"MTU 67"}},
		{"vsock cid", func(s *VMSpec) { s.Vsock.CID = 2 }, []string{"guest CID 2"}},
		{"vsock path", func(s *VMSpec) { s.Vsock.UDSPath = "" }, []string{"uds path required"}},
		{"long socket", func(s *VMSpec) { s.APISocket = "/" + strings.Repeat("s", 120) }, []string{"API socket path"}},
		{"bad level", func(s *VMSpec) { s.Logging.Level = "chatty" }, []string{"log level"}},
		{"all problems reported", func(s *VMSpec) { s.ID = ""; s.VCPUs = 0; s.MemoryMiB = -1; s.Kernel = "" },
			[]string{"instance id", "vcpus 0", "memory -1", "kernel: required"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.mutate(&s)
			err := s.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestRestoreSpecValidate(t *testing.T) {
	valid := RestoreSpec{ID: "r-1", Dir: "/tmp/r", SnapshotPath: "s", MemFilePath: "m"}
	tests := []struct {
		name   string
		mutate func(*RestoreSpec)
		want   string
	}{
		{"valid", func(*RestoreSpec) {}, ""},
		{"no snapshot", func(s *RestoreSpec) { s.SnapshotPath = "" }, "snapshot path"},
		{"no mem", func(s *RestoreSpec) { s.MemFilePath = "" }, "memory file"},
		{"bad override", func(s *RestoreSpec) {
			s.NetworkOverrides = []firecracker.NetworkOverride{{IfaceID: "eth-0", HostDevName: "tap0"}}
		}, "network override"},
		{"bad id", func(s *RestoreSpec) { s.ID = "" }, "instance id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := valid
			tt.mutate(&s)
			err := s.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

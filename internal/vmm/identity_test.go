package vmm

import (
	"os"
	"os/exec"
	"testing"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

func TestProcessStartTime(t *testing.T) {
	a, err := ProcessStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ProcessStartTime(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if a == 0 || a != b {
		t.Fatalf("start times %d, %d: want equal and non-zero", a, b)
	}

	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	// Reaped: the pid is gone (reuse this fast is practically impossible).
	if _, err := ProcessStartTime(cmd.Process.Pid); !errdefs.IsNotFound(err) {
		t.Fatalf("ProcessStartTime(dead pid) = %v, want not found", err)
	}
	if _, err := ProcessStartTime(0); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("ProcessStartTime(0) = %v, want invalid argument", err)
	}
}

func TestParseStartTime(t *testing.T) {
	const tail = " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21"
	tests := []struct {
		name    string
		stat    string
		want    uint64
		wantErr bool
	}{
		{"plain", "123 (firecracker)" + tail, 424242, false},
		{"comm with spaces and parens", "123 (a) b (c) d)" + tail, 424242, false},
		{"no paren", "123 firecracker" + tail, 0, true},
		{"too short", "123 (x) S 1 2 3", 0, true},
		{"not a number", "123 (x) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 abc", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStartTime([]byte(tt.stat))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("parseStartTime = %d, %v; want %d, err %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestHasInstanceID(t *testing.T) {
	dir := t.TempDir()
	vmmLike := startCmdIn(t, dir, "sh", "-c", "while :; do sleep 1; done", "sh", "--api-sock", "x", "--id", "1m8habcdefgh")
	plain := startIn(t, dir)
	tests := []struct {
		pid  int
		id   string
		want bool
	}{
		{vmmLike, "1m8habcdefgh", true},
		{vmmLike, "1m8hzzzzzzzz", false},
		{plain, "1m8habcdefgh", false}, // works in the directory, is not its VMM
		{1 << 30, "1m8habcdefgh", false},
	}
	for _, tt := range tests {
		if got := HasInstanceID(tt.pid, tt.id); got != tt.want {
			t.Errorf("HasInstanceID(%d, %s) = %v, want %v", tt.pid, tt.id, got, tt.want)
		}
	}
}

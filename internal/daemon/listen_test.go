package daemon

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func testLogger() (*slog.Logger, *testutil.SyncBuffer) {
	buf := &testutil.SyncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func TestListenUnixCreatesParentAndSetsMode(t *testing.T) {
	log, _ := testLogger()
	path := filepath.Join(testutil.ShortDir(t), "run", "vmm", "vmm.sock")
	l, err := listenUnix(t.Context(), path, -1, log)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	l.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after close: %v", err)
	}
}

func TestListenUnixGroup(t *testing.T) {
	testutil.RequiresRoot(t)
	log, _ := testLogger()
	path := filepath.Join(testutil.ShortDir(t), "vmm.sock")
	l, err := listenUnix(t.Context(), path, 4242, log)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 4242 {
		t.Errorf("socket gid %d, want 4242", gid)
	}
}

func TestListenUnixRemovesStaleSocket(t *testing.T) {
	log, logs := testLogger()
	path := filepath.Join(testutil.ShortDir(t), "vmm.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket not there: %v", err)
	}
	l, err := listenUnix(t.Context(), path, -1, log)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l.Close()
	if !strings.Contains(logs.String(), "removing stale socket") {
		t.Errorf("no log of the removal:\n%s", logs)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("new socket does not answer: %v", err)
	}
	c.Close()
}

func TestListenUnixRefusesLiveDaemon(t *testing.T) {
	log, _ := testLogger()
	path := filepath.Join(testutil.ShortDir(t), "vmm.sock")
	live, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Close()
	_, err = listenUnix(t.Context(), path, -1, log)
	if err == nil || !strings.Contains(err.Error(), "another daemon is listening on "+path) {
		t.Fatalf("err = %v", err)
	}
	// The live socket is untouched.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("live socket damaged: %v", err)
	}
	c.Close()
}

func TestListenUnixRefusesNonSocket(t *testing.T) {
	log, _ := testLogger()
	path := touch(t, testutil.ShortDir(t), "vmm.sock")
	_, err := listenUnix(t.Context(), path, -1, log)
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("file removed: %v", err)
	}
}

func TestListenUnixPathTooLong(t *testing.T) {
	log, _ := testLogger()
	path := filepath.Join(testutil.ShortDir(t), strings.Repeat("d", 100), "vmm.sock")
	_, err := listenUnix(t.Context(), path, -1, log)
	if err == nil || !strings.Contains(err.Error(), "limited to 107 bytes") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Dir(path)); !os.IsNotExist(err) {
		t.Errorf("directory created for an unusable path: %v", err)
	}
}

// TestNetworkConfigDeniesTheBoundTCPPort: sandboxes must not reach the TCP
// API on the port actually bound, also when tcp_addr names port 0 (a
// random port, for which the configuration alone yields no block rule).
func TestNetworkConfigDeniesTheBoundTCPPort(t *testing.T) {
	log, _ := testLogger()
	for _, tc := range []struct {
		name   string
		addr   string // tcp_addr; "" for no TCP listener
		listen bool
	}{
		{name: "port 0", addr: "127.0.0.1:0", listen: true},
		{name: "no TCP listener", addr: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.GRPC.TCPAddr = tc.addr
			cfg.derive()
			var tl net.Listener
			var want []uint16
			if tc.listen {
				l, err := listenTCP(t.Context(), tc.addr)
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				tl = l
				want = []uint16{uint16(l.Addr().(*net.TCPAddr).Port)}
			}
			got := networkConfig(&cfg, tl, log).DenyTCPPorts
			if !slices.Equal(got, want) {
				t.Errorf("DenyTCPPorts = %v, want %v (bound %v)", got, want, tl)
			}
		})
	}
}

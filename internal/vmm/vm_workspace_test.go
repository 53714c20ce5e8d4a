package vmm

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// A running VM reports the workspace its launcher laid out, with the paths
// it actually uses, in both modes: what the sandbox manager places files
// into and collects them from.
func TestVMWorkspace(t *testing.T) {
	tests := []struct {
		name   string
		launch func(t *testing.T) (Launcher, VMSpec)
		jailed bool
	}{
		{"direct", func(t *testing.T) (Launcher, VMSpec) {
			l, _ := emulator(t)
			return l, fullSpec(t, "ws-direct")
		}, false},
		{"jailed", func(t *testing.T) (Launcher, VMSpec) {
			return jailerLauncher(t, "1"), jailSpec(t, "ws-jailed")
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, spec := tt.launch(t)
			ctx := testCtx(t, 30*time.Second)
			vm, err := Start(ctx, l, spec)
			if err != nil {
				t.Fatal(err)
			}
			defer vm.Kill(context.Background())
			ws := vm.Workspace()
			if ws.ID != spec.ID || ws.APISocket != vm.SocketPath || ws.LogPath != vm.LogPath ||
				ws.MetricsPath != vm.MetricsPath || ws.VsockPath != vm.VsockPath || ws.ConsolePath != vm.ConsolePath {
				t.Errorf("workspace %+v does not name the VM's paths (api %s log %s metrics %s vsock %s console %s)",
					ws, vm.SocketPath, vm.LogPath, vm.MetricsPath, vm.VsockPath, vm.ConsolePath)
			}
			wantRoot := spec.Dir
			if tt.jailed {
				if vm.Jail == nil || ws.Jail == nil {
					t.Fatalf("jail %v, workspace jail %v", vm.Jail, ws.Jail)
				}
				wantRoot = vm.Jail.Root
				if ws.UID != vm.Jail.UID || ws.GID != vm.Jail.GID || ws.Cgroup != vm.Jail.Cgroup {
					t.Errorf("workspace identity %d:%d %q, jail %d:%d %q", ws.UID, ws.GID, ws.Cgroup, vm.Jail.UID, vm.Jail.GID, vm.Jail.Cgroup)
				}
			} else if ws.Jail != nil {
				t.Errorf("unjailed VM with a workspace jail %+v", ws.Jail)
			}
			if ws.Root != wantRoot || ws.Path("snapshot.mem") != filepath.Join(wantRoot, "snapshot.mem") {
				t.Errorf("root %s (path %s), want %s", ws.Root, ws.Path("snapshot.mem"), wantRoot)
			}
			if filepath.Dir(ws.ConsolePath) != spec.Dir {
				t.Errorf("console %s outside the VM's own directory %s", ws.ConsolePath, spec.Dir)
			}
		})
	}
}

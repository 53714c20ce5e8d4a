package sandbox

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// jailLauncher is a nopLauncher whose workspaces are jails: each VMM's
// files live in a root of its own outside the sandbox directory, owned by
// the test's user, as the jailer lays them out.
type jailLauncher struct {
	nopLauncher
	base string
}

func (l jailLauncher) Workspace(id, dir string, _ vmm.Limits) (vmm.Workspace, error) {
	j := vmm.Jail{ID: id, Dir: filepath.Join(l.base, id), Root: filepath.Join(l.base, id, "root"),
		UID: os.Getuid(), GID: os.Getgid()}
	if err := os.MkdirAll(j.Root, 0o700); err != nil {
		return vmm.Workspace{}, err
	}
	return vmm.Workspace{ID: id, Root: j.Root, Jail: &j, UID: j.UID, GID: j.GID,
		APISocket: j.HostPath(vmm.JailAPISocket), ConsolePath: filepath.Join(dir, ConsoleName)}, nil
}

func (l jailLauncher) ReleaseWorkspace(id string, _ vmm.Limits) error {
	return os.RemoveAll(filepath.Join(l.base, id))
}

// newBootEnv returns a manager on a fake runtime, its workspaces jails
// under base when jailed (base is empty otherwise).
func newBootEnv(t *testing.T, jailed bool) (e *testEnv, rt *fakeRuntime, base string) {
	dataDir := t.TempDir()
	rt = &fakeRuntime{}
	e = newTestEnv(t, dataDir, rt, func(c *Config) {
		if jailed {
			base = filepath.Join(dataDir, "jails")
			c.Launcher = jailLauncher{nopLauncher{&vmm.DirectLauncher{}}, base}
		}
	})
	return e, rt, base
}

// specFile returns the host path of name in the VM spec of sandbox id:
// relative names resolve in the workspace root (base/id/root in a jail,
// the sandbox directory otherwise).
func specFile(e *testEnv, base, id, name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	if base != "" {
		return filepath.Join(base, id, "root", name)
	}
	return filepath.Join(e.m.SandboxesDir(), id, name)
}

// TestBootFilesSwapRace swaps an allowed kernel (and initrd) path between
// a regular file and a symlink to a root-only secret while sandboxes are
// created from it: whatever the request's path names by the time the
// VMM opens it, the file the VM spec names is the checked kernel, never
// the secret, in direct and in jailer mode.
func TestBootFilesSwapRace(t *testing.T) {
	tests := []struct {
		name   string
		jailed bool
	}{
		{"direct", false},
		{"jailed", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, rt, base := newBootEnv(t, tt.jailed)
			dataDir := e.dataDir
			secret := filepath.Join(t.TempDir(), "shadow")
			if err := os.WriteFile(secret, []byte("SECRET root:$6$hash"), 0o600); err != nil {
				t.Fatal(err)
			}
			kdir := filepath.Join(dataDir, KernelsDir)
			good := filepath.Join(kdir, "good")
			goodData := []byte("GOOD-KERNEL")
			if err := os.WriteFile(good, goodData, 0o644); err != nil {
				t.Fatal(err)
			}
			swap := filepath.Join(kdir, "swap")
			if err := os.Link(good, swap); err != nil {
				t.Fatal(err)
			}
			// The swapper replaces swap atomically (rename) with a link
			// to the good file or a symlink to the secret, until stopped;
			// it leaves the symlink in place.
			var stop atomic.Bool
			var swapper sync.WaitGroup
			swapper.Go(func() {
				tmp := filepath.Join(kdir, "tmp")
				for i := 0; ; i++ {
					_ = os.Remove(tmp)
					last := stop.Load()
					var err error
					if i%2 == 0 || last {
						err = os.Symlink(secret, tmp)
					} else {
						err = os.Link(good, tmp)
					}
					if err == nil {
						err = os.Rename(tmp, swap)
					}
					if err != nil {
						t.Errorf("swapper: %v", err)
						return
					}
					if last {
						return
					}
				}
			})

			const n = 300
			var accepted []string
			for range n {
				s, err := e.m.Create(t.Context(), CreateRequest{Kernel: swap, Initrd: swap})
				if err != nil {
					continue // refused: the swap was seen
				}
				accepted = append(accepted, s.ID)
			}
			stop.Store(true)
			swapper.Wait()
			if fi, err := os.Lstat(swap); err != nil || fi.Mode()&os.ModeSymlink == 0 {
				t.Fatalf("swap is not left a symlink: %v %v", fi, err)
			}
			if len(accepted) == 0 {
				t.Fatal("no create was accepted")
			}
			for _, id := range accepted {
				e.waitState(t, id, StateReady, 10*time.Second)
			}
			rt.mu.Lock()
			specs := append([]vmm.VMSpec(nil), rt.specs...)
			rt.mu.Unlock()
			if len(specs) != len(accepted) {
				t.Fatalf("%d specs for %d accepted creates", len(specs), len(accepted))
			}
			leaks := 0
			for _, spec := range specs {
				for _, name := range []string{spec.Kernel, spec.Initrd} {
					data, err := os.ReadFile(specFile(e, base, spec.ID, name))
					switch {
					case err != nil:
						t.Errorf("sandbox %s: reading %q: %v", spec.ID, name, err)
					case !bytes.Equal(data, goodData):
						leaks++
						t.Errorf("sandbox %s: %q holds %q, not the checked kernel", spec.ID, name, data)
					}
				}
			}
			if leaks > 0 {
				t.Errorf("%d boot files of %d accepted creates were another file", leaks, len(accepted))
			}
			t.Logf("%d of %d creates accepted", len(accepted), n)
		})
	}
}

// TestBootFilesPlaced checks how the kernel and initrd reach the VMM:
// unjailed a hard link to the checked file (no copy), in a jail a copy
// of its own; Firecracker is given the relative names; the request's
// resolved paths stay in the record.
func TestBootFilesPlaced(t *testing.T) {
	tests := []struct {
		name     string
		jailed   bool
		wantLink bool
	}{
		{"direct: hard link", false, true},
		{"jailed: own copy", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, rt, base := newBootEnv(t, tt.jailed)
			initrd := filepath.Join(e.dataDir, KernelsDir, "initrd.img")
			writeFile(t, initrd, 1000)
			s, err := e.m.Create(t.Context(), CreateRequest{Initrd: initrd})
			if err != nil {
				t.Fatal(err)
			}
			e.waitState(t, s.ID, StateReady, 5*time.Second)
			spec := rt.specs[0]
			if spec.Kernel != KernelName || spec.Initrd != InitrdName {
				t.Errorf("spec kernel %q initrd %q, want %q and %q", spec.Kernel, spec.Initrd, KernelName, InitrdName)
			}
			if s.Hardware.Kernel != e.kernel || s.Hardware.Initrd != initrd {
				t.Errorf("recorded kernel %q initrd %q", s.Hardware.Kernel, s.Hardware.Initrd)
			}
			for name, src := range map[string]string{spec.Kernel: e.kernel, spec.Initrd: initrd} {
				placed, err := os.Stat(specFile(e, base, s.ID, name))
				if err != nil {
					t.Fatal(err)
				}
				orig, err := os.Stat(src)
				if err != nil {
					t.Fatal(err)
				}
				if os.SameFile(placed, orig) != tt.wantLink {
					t.Errorf("%s: same file as %s: %v, want %v", name, src, !tt.wantLink, tt.wantLink)
				}
				if placed.Size() != orig.Size() {
					t.Errorf("%s: %d bytes, want %d", name, placed.Size(), orig.Size())
				}
			}
			if err := e.m.Remove(t.Context(), s.ID, true); err != nil {
				t.Fatal(err)
			}
			// Removing the sandbox removes its link, never the original.
			if _, err := os.Stat(e.kernel); err != nil {
				t.Errorf("the kernel went with the sandbox: %v", err)
			}
		})
	}
}

// TestLinkFDLinksTheOpenFile checks that linkFD links the inode of the
// descriptor, not what its path names now, and fails (so that the caller
// copies) for a file that has no name left.
func TestLinkFDLinksTheOpenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "a")
	if err := os.WriteFile(path, []byte("checked"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Rename(path, path+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("swapped"), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, "link")
	if err := linkFD(f, dst); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(dst); string(data) != "checked" {
		t.Errorf("link holds %q, want the open file's content", data)
	}
	if err := os.Remove(path + ".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dst); err != nil {
		t.Fatal(err)
	}
	if err := linkFD(f, dst); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("linking an unlinked file: %v, want ENOENT", err)
	}
}

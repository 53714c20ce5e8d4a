package vmm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// wsMode is one way of running VMMs, with what its Workspace must be.
type wsMode struct {
	name   string
	jailed bool
	// launcher returns the mode's launcher and the root its workspace of
	// id must have.
	launcher func(t *testing.T, id string) (l Launcher, root string)
}

// wsModes returns the two modes.
func wsModes() []wsMode {
	return []wsMode{
		{name: "direct", launcher: func(t *testing.T, _ string) (Launcher, string) {
			return &DirectLauncher{Config: Config{Binary: "/bin/true"}}, ""
		}},
		{name: "jailed", jailed: true, launcher: func(t *testing.T, id string) (Launcher, string) {
			testutil.RequiresRoot(t)
			dir := t.TempDir()
			mi, fc := fakeJailerFiles(t, dir)
			base := filepath.Join(dir, "jails")
			if err := os.Mkdir(base, 0o755); err != nil {
				t.Fatal(err)
			}
			return &JailerLauncher{Config: Config{Binary: fc}, Jailer: JailerConfig{
				Binary: "/jailer", UID: testJailUID, GID: testJailGID, ChrootBaseDir: base, CgroupVersion: "2", MountInfo: mi,
			}}, filepath.Join(base, "my-fc", id, "root")
		}},
	}
}

// prepare returns the mode's launcher and the workspace of id in a fresh
// directory.
func (m wsMode) prepare(t *testing.T, id string) (Launcher, Workspace) {
	t.Helper()
	l, _ := m.launcher(t, id)
	w, err := l.Workspace(id, t.TempDir(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return l, w
}

// countingClone returns a CloneFunc (disk.Clone, or a failure) that counts
// its calls.
func countingClone(fail bool) (CloneFunc, *atomic.Int32) {
	n := new(atomic.Int32)
	return func(ctx context.Context, src, dst string) error {
		n.Add(1)
		if fail {
			return errors.New("clone failed")
		}
		return disk.Clone(ctx, src, dst)
	}, n
}

func statT(t *testing.T, path string) syscall.Stat_t {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestWorkspaceLayout(t *testing.T) {
	for _, m := range wsModes() {
		t.Run(m.name, func(t *testing.T) {
			l, root := m.launcher(t, "ws-1")
			dir := filepath.Join(t.TempDir(), "sandbox") // created by Workspace
			// Layout gives the same paths and creates nothing.
			lw, err := l.Layout("ws-1", dir, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{dir, root} {
				if p == "" {
					continue
				}
				if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("Layout created %s (%v)", p, err)
				}
			}
			if _, err := l.Layout("bad_id", dir, Limits{}); err == nil {
				t.Error("Layout accepted an invalid id")
			}
			w, err := l.Workspace("ws-1", dir, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if lw.Jail != nil && w.Jail != nil && reflect.DeepEqual(*lw.Jail, *w.Jail) {
				lw.Jail = w.Jail
			}
			if lw != w {
				t.Errorf("Layout\n got %+v\nwant %+v (Workspace)", lw, w)
			}
			want := Workspace{
				ID: "ws-1", Root: dir,
				APISocket: filepath.Join(dir, "firecracker.sock"), LogPath: filepath.Join(dir, "firecracker.log"),
				MetricsPath: filepath.Join(dir, "firecracker.metrics"), VsockPath: filepath.Join(dir, "vsock.sock"),
				ConsolePath: filepath.Join(dir, "console.log"), UID: os.Getuid(), GID: os.Getgid(),
			}
			if m.jailed {
				want.Root = root
				want.APISocket = filepath.Join(root, "run/firecracker.socket")
				want.LogPath, want.MetricsPath = filepath.Join(root, "firecracker.log"), filepath.Join(root, "firecracker.metrics")
				want.VsockPath = filepath.Join(root, "vsock.sock")
				want.UID, want.GID = testJailUID, testJailGID
				want.Cgroup = "/sys/fs/cgroup/unified/my-fc/ws-1"
				if w.Jail == nil || w.Jail.Root != root || w.Jail.ID != "ws-1" {
					t.Fatalf("jail %+v, want root %s", w.Jail, root)
				}
				want.Jail = w.Jail
			}
			if w != want {
				t.Errorf("workspace\n got %+v\nwant %+v", w, want)
			}
			if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
				t.Errorf("sandbox directory: %v", err)
			}
			st := statT(t, w.Root)
			if int(st.Uid) != w.UID || int(st.Gid) != w.GID || (m.jailed && st.Mode&0o777 != 0o700) {
				t.Errorf("root %s: owner %d:%d mode %o", w.Root, st.Uid, st.Gid, st.Mode&0o777)
			}
			for _, tt := range []struct{ name, want string }{
				{"rootfs.ext4", filepath.Join(w.Root, "rootfs.ext4")},
				{"/run/x", filepath.Join(w.Root, "run", "x")},
			} {
				if got := w.Path(tt.name); got != tt.want {
					t.Errorf("Path(%q) = %s, want %s", tt.name, got, tt.want)
				}
			}
			// Idempotent: a second call keeps what is in the workspace.
			touch(t, w.Path("kept"), 10)
			if _, err := l.Workspace("ws-1", dir, Limits{}); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(w.Path("kept")); err != nil {
				t.Errorf("a second Workspace call lost a file: %v", err)
			}
			if _, err := l.Workspace("bad_id", dir, Limits{}); err == nil {
				t.Error("an invalid id was accepted")
			}
			if _, err := l.Workspace("ws-1", "", Limits{}); err == nil {
				t.Error("an empty dir was accepted")
			}
		})
	}
}

func TestWorkspacePlace(t *testing.T) {
	tests := []struct {
		name      string
		share     bool
		failClone bool
		nilClone  bool
		// directLinked: an unjailed VMM shares the file (a hard link).
		directLinked bool
		wantErr      bool
	}{
		{name: "shared", share: true, directLinked: true},
		{name: "private", share: false},
		{name: "default clone", nilClone: true},
		{name: "clone fails", failClone: true, wantErr: true},
	}
	for _, m := range wsModes() {
		t.Run(m.name, func(t *testing.T) {
			_, w := m.prepare(t, "ws-2")
			src := filepath.Join(t.TempDir(), "catalog.mem")
			if err := os.WriteFile(src, []byte("catalog file"), 0o644); err != nil {
				t.Fatal(err)
			}
			srcBefore := statT(t, src)
			for i, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					clone, calls := countingClone(tt.failClone)
					if tt.nilClone {
						clone = nil
					}
					name := "file" + string(rune('a'+i))
					err := w.Place(t.Context(), src, name, tt.share, clone)
					if tt.wantErr {
						if err == nil {
							t.Fatal("Place succeeded")
						}
						return
					}
					if err != nil {
						t.Fatal(err)
					}
					dst := w.Path(name)
					if b, err := os.ReadFile(dst); err != nil || string(b) != "catalog file" {
						t.Fatalf("placed file: %q, %v", b, err)
					}
					linked := tt.directLinked && !m.jailed
					st := statT(t, dst)
					if (st.Ino == srcBefore.Ino) != linked {
						t.Errorf("%s: same inode as the source = %v, want %v", dst, st.Ino == srcBefore.Ino, linked)
					}
					wantCalls := int32(1)
					if linked || tt.nilClone {
						wantCalls = 0
					}
					if calls.Load() != wantCalls {
						t.Errorf("clone called %d times, want %d", calls.Load(), wantCalls)
					}
					if m.jailed && (st.Uid != testJailUID || st.Gid != testJailGID || st.Mode&0o777 != 0o600) {
						t.Errorf("%s in the jail: owner %d:%d mode %o, want %d:%d 0600", dst, st.Uid, st.Gid, st.Mode&0o777, testJailUID, testJailGID)
					}
				})
			}
			// The source is never handed to the jail.
			if after := statT(t, src); after.Uid != srcBefore.Uid || after.Mode != srcBefore.Mode {
				t.Errorf("source changed: owner %d mode %o, was %d %o", after.Uid, after.Mode, srcBefore.Uid, srcBefore.Mode)
			}
		})
	}
}

func TestWorkspaceOwn(t *testing.T) {
	for _, m := range wsModes() {
		t.Run(m.name, func(t *testing.T) {
			_, w := m.prepare(t, "ws-3")
			p := w.Path("rootfs.ext4")
			touch(t, p, 100) // mode 0644, the daemon's
			if err := w.Own(p); err != nil {
				t.Fatal(err)
			}
			st := statT(t, p)
			wantUID, wantMode := uint32(os.Getuid()), uint32(0o644)
			if m.jailed {
				wantUID, wantMode = testJailUID, 0o600
			}
			if st.Uid != wantUID || st.Mode&0o777 != wantMode {
				t.Errorf("after Own: owner %d mode %o, want %d %o", st.Uid, st.Mode&0o777, wantUID, wantMode)
			}
			if err := w.Own(w.Path("missing")); m.jailed && err == nil {
				t.Error("Own of a missing file succeeded")
			}
		})
	}
}

// TestWorkspaceOutput follows a file the VMM writes (a snapshot) from
// Output to Collect, and one given up on to Discard.
func TestWorkspaceOutput(t *testing.T) {
	for _, m := range wsModes() {
		t.Run(m.name, func(t *testing.T) {
			_, w := m.prepare(t, "ws-4")
			out := t.TempDir()
			tests := []struct {
				name    string
				dst     string
				collect bool // else Discard
				stale   bool // a link to another file is where the VMM writes
			}{
				{name: "collected", dst: filepath.Join(out, "state"), collect: true},
				{name: "collected over a stale link", dst: filepath.Join(out, "mem"), collect: true, stale: true},
				{name: "discarded", dst: filepath.Join(out, "gone"), stale: true},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					name := filepath.Base(tt.dst) + ".in"
					other := filepath.Join(t.TempDir(), "other")
					if err := os.WriteFile(other, []byte("someone else's"), 0o644); err != nil {
						t.Fatal(err)
					}
					if tt.stale {
						if err := os.Link(other, w.Path(name)); err != nil {
							t.Fatal(err)
						}
					}
					wp, err := w.Output(name, tt.dst)
					if err != nil {
						t.Fatal(err)
					}
					wantWP := tt.dst
					if m.jailed {
						wantWP = w.Path(name)
						if _, err := os.Lstat(wp); !errors.Is(err, os.ErrNotExist) {
							t.Fatalf("Output left %s in place: %v", wp, err)
						}
					}
					if wp != wantWP {
						t.Fatalf("Output = %s, want %s", wp, wantWP)
					}
					// Firecracker writes the file as the workspace's user.
					if err := os.WriteFile(wp, []byte("written by the VMM"), 0o600); err != nil {
						t.Fatal(err)
					}
					if err := os.Lchown(wp, w.UID, w.GID); err != nil {
						t.Fatal(err)
					}
					if b, _ := os.ReadFile(other); string(b) != "someone else's" {
						t.Fatalf("the VMM wrote through a stale link: %q", b)
					}
					if !tt.collect {
						if err := w.Discard(wp); err != nil {
							t.Fatal(err)
						}
						if _, err := os.Lstat(wp); m.jailed == !errors.Is(err, os.ErrNotExist) {
							t.Errorf("after Discard, %s: %v (jailed %v)", wp, err, m.jailed)
						}
						if err := w.Discard(wp); err != nil {
							t.Errorf("a second Discard: %v", err)
						}
						return
					}
					clone, calls := countingClone(false)
					if err := w.Collect(t.Context(), wp, tt.dst, clone); err != nil {
						t.Fatal(err)
					}
					if b, err := os.ReadFile(tt.dst); err != nil || string(b) != "written by the VMM" {
						t.Fatalf("collected file: %q, %v", b, err)
					}
					if st := statT(t, tt.dst); int(st.Uid) != os.Getuid() || int(st.Gid) != os.Getgid() {
						t.Errorf("collected file owned by %d:%d, want the daemon's", st.Uid, st.Gid)
					}
					if m.jailed {
						if _, err := os.Lstat(wp); !errors.Is(err, os.ErrNotExist) {
							t.Errorf("Collect left %s: %v", wp, err)
						}
					}
					if calls.Load() != 0 {
						t.Errorf("clone called %d times for a rename", calls.Load())
					}
				})
			}
		})
	}
}

// TestWorkspaceCollectAcrossFileSystems collects a file out of a jail into
// another file system (/dev/shm), where a rename fails with EXDEV.
func TestWorkspaceCollectAcrossFileSystems(t *testing.T) {
	_, w := wsModes()[1].prepare(t, "ws-5")
	shm, err := os.MkdirTemp("/dev/shm", "vmm-ws-")
	if err != nil {
		t.Skipf("skipping: no /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	if statT(t, shm).Dev == statT(t, w.Root).Dev {
		t.Skip("skipping: /dev/shm is on the jail's file system")
	}
	wp, err := w.Output("snapshot.mem", filepath.Join(shm, "mem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wp, []byte("memory"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(wp, w.UID, w.GID); err != nil {
		t.Fatal(err)
	}
	clone, calls := countingClone(false)
	dst := filepath.Join(shm, "mem")
	if err := w.Collect(t.Context(), wp, dst, clone); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "memory" || calls.Load() != 1 {
		t.Fatalf("collected %q, %v after %d clones, want a copy", b, err, calls.Load())
	}
	if st := statT(t, dst); int(st.Uid) != os.Getuid() {
		t.Errorf("collected file owned by %d", st.Uid)
	}
	if _, err := os.Lstat(wp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the jail's copy was left: %v", err)
	}
}

// TestWorkspaceRelease checks ReleaseWorkspace, Workspaces and FindVMMs.
func TestWorkspaceRelease(t *testing.T) {
	for _, m := range wsModes() {
		t.Run(m.name, func(t *testing.T) {
			l, root := m.launcher(t, "ws-6")
			dir := t.TempDir()
			w, err := l.Workspace("ws-6", dir, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			var wantIDs []string
			if m.jailed {
				wantIDs = []string{"ws-6"}
				jails := filepath.Dir(filepath.Dir(root))
				// Not jails of VMMs: a file and a name that is no instance id.
				touch(t, filepath.Join(jails, "ws-file"), 1)
				if err := os.Mkdir(filepath.Join(jails, "not_an_id"), 0o700); err != nil {
					t.Fatal(err)
				}
			}
			if ids, err := l.Workspaces(); err != nil || !slices.Equal(ids, wantIDs) {
				t.Errorf("Workspaces = %q, %v; want %q", ids, err, wantIDs)
			}

			vmmLike := startCmdIn(t, dir, "sh", "-c", "while :; do sleep 1; done", "sh", "--api-sock", "x", "--id", "ws-6")
			startIn(t, dir) // works in dir but is no VMM
			startCmdIn(t, t.TempDir(), "sh", "-c", "while :; do sleep 1; done", "sh", "--id", "ws-6")
			pids, err := l.FindVMMs("ws-6", dir)
			if err != nil || !slices.Equal(pids, []int{vmmLike}) {
				t.Errorf("FindVMMs = %v, %v; want [%d]", pids, err, vmmLike)
			}

			for range 2 { // idempotent
				if err := l.ReleaseWorkspace("ws-6", Limits{}); err != nil {
					t.Fatal(err)
				}
			}
			if m.jailed {
				assertGone(t, w.Jail.Dir)
			} else if _, err := os.Stat(dir); err != nil {
				t.Errorf("ReleaseWorkspace removed the sandbox directory: %v", err)
			}
			if ids, err := l.Workspaces(); err != nil || len(ids) != 0 {
				t.Errorf("Workspaces after the release = %q, %v", ids, err)
			}
		})
	}
}

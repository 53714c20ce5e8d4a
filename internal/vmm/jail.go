package vmm

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
)

// Jail file names: the paths Firecracker is given inside the chroot.
const (
	// JailAPISocket is Firecracker's --api-sock inside the jail.
	JailAPISocket = "/run/firecracker.socket"
	// JailLogPath is Firecracker's --log-path inside the jail.
	JailLogPath = "/firecracker.log"
	// JailMetricsPath is Firecracker's --metrics-path inside the jail.
	JailMetricsPath = "/firecracker.metrics"
	// JailSeccompFilter is where a configured seccomp filter is placed.
	JailSeccompFilter = "/seccomp.bpf"
	// JailKernelName and JailInitrdName are the names vmm.Start gives the
	// kernel and the initrd inside a jail.
	JailKernelName = "vmlinux"
	JailInitrdName = "initrd"
)

// cgroupRemoveTimeout bounds the retries of rmdir on a cgroup that the
// kernel has not released yet.
const cgroupRemoveTimeout = 2 * time.Second

// Jail describes one VMM's jail on the host.
type Jail struct {
	// ID is the jail id.
	ID string
	// Dir is <chroot_base>/<exec name>/<id>, removed by cleanup.
	Dir string
	// Root is the chroot: Dir/root.
	Root string
	// UID and GID own everything in Root.
	UID, GID int
	// Cgroups are the cgroup directories the jailer creates for this
	// launch's limits (one per v1 controller, or the v2 one).
	Cgroups []string
	// Cgroup is the cgroup path shown to users:
	// <mount>/<parent_cgroup>/<id> (of the first v1 controller, cpu, or
	// the unified hierarchy).
	Cgroup string
}

// HostPath returns the host path of a path inside the jail ("/run/x" or
// the relative "x", both resolved from the jail's root).
func (j Jail) HostPath(jailPath string) string {
	return filepath.Join(j.Root, strings.TrimPrefix(jailPath, "/"))
}

// JailFile is a host file a launch places in the jail.
type JailFile struct {
	// HostPath is the file on the host.
	HostPath string
	// JailName is its name in the jail's root directory.
	JailName string
}

// Jail returns the jail of id and, for limits, its cgroup directories.
func (l *JailerLauncher) Jail(id string, limits Limits) (Jail, error) {
	if err := ValidateInstanceID(id); err != nil {
		return Jail{}, fmt.Errorf("vmm: jail: %w", err)
	}
	bin, err := l.execFile()
	if err != nil {
		return Jail{}, fmt.Errorf("vmm: jail %s: firecracker binary: %w", id, err)
	}
	exe := filepath.Base(bin)
	dir := filepath.Join(l.Jailer.ChrootBaseDir, exe, id)
	j := Jail{ID: id, Dir: dir, Root: filepath.Join(dir, "root"), UID: l.Jailer.UID, GID: l.Jailer.GID}
	parent := l.Jailer.ParentCgroup
	if parent == "" {
		parent = exe
	}
	settings := CgroupSettings(l.Jailer.cgroupVersion(), limits)
	mountinfo := l.Jailer.MountInfo
	if mountinfo == "" {
		mountinfo = "/proc/self/mountinfo"
	}
	if l.Jailer.cgroupVersion() == "1" {
		var controllers []string
		for _, s := range settings {
			c, _, _ := strings.Cut(s, ".")
			if !slices.Contains(controllers, c) {
				controllers = append(controllers, c)
			}
		}
		for _, c := range controllers {
			mnt, err := cgroupMount(mountinfo, c)
			if err != nil {
				return Jail{}, fmt.Errorf("vmm: jail %s: %w", id, err)
			}
			j.Cgroups = append(j.Cgroups, filepath.Join(mnt, parent, id))
		}
	} else if mnt, err := cgroupMount(mountinfo, ""); err == nil {
		if len(settings) > 0 {
			j.Cgroups = []string{filepath.Join(mnt, parent, id)}
		}
		j.Cgroup = filepath.Join(mnt, parent, id)
	} else if len(settings) > 0 {
		return Jail{}, fmt.Errorf("vmm: jail %s: %w", id, err)
	}
	if len(j.Cgroups) > 0 {
		j.Cgroup = j.Cgroups[0]
	}
	return j, nil
}

// cgroupMount finds the mount point of the v1 hierarchy with controller
// in mountinfo, or of the cgroup2 hierarchy when controller is empty.
func cgroupMount(mountinfo, controller string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", fmt.Errorf("finding cgroup mounts: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 {
			continue
		}
		switch {
		case controller == "" && tail[0] == "cgroup2":
			return fields[4], nil
		case controller != "" && tail[0] == "cgroup" && slices.Contains(strings.Split(tail[2], ","), controller):
			return fields[4], nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("reading %s: %w", mountinfo, err)
	}
	if controller == "" {
		return "", errors.New("no cgroup2 hierarchy is mounted")
	}
	return "", fmt.Errorf("no cgroup v1 hierarchy with the %s controller is mounted", controller)
}

// Prepare creates the jail's root directory for id (idempotent): Dir as
// root-only 0700 directories, Root 0700 owned by the jail's uid:gid. Files
// may then be placed in it (PlaceFile) before Launch.
func (l *JailerLauncher) Prepare(id string) (Jail, error) {
	j, err := l.Jail(id, Limits{})
	if err != nil {
		return Jail{}, err
	}
	if err := l.prepare(j); err != nil {
		return Jail{}, fmt.Errorf("vmm: jail %s: %w", id, err)
	}
	return j, nil
}

func (l *JailerLauncher) prepare(j Jail) error {
	st, err := os.Stat(l.Jailer.ChrootBaseDir)
	if err != nil || !st.IsDir() {
		return fmt.Errorf("chroot base dir %s: must be an existing directory (%v)", l.Jailer.ChrootBaseDir, err)
	}
	if err := os.MkdirAll(j.Dir, 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(j.Root, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	if err := os.Lchown(j.Root, j.UID, j.GID); err != nil {
		return err
	}
	return os.Chmod(j.Root, 0o700)
}

// Workspace implements Launcher: the chroot of id (Prepare, idempotent:
// an existing one is kept with its files), owned by the jail's user, with
// the cgroups of limits; the console stays in dir (created if missing).
func (l *JailerLauncher) Workspace(id, dir string, limits Limits) (Workspace, error) {
	if dir == "" {
		return Workspace{}, fmt.Errorf("vmm: workspace %s: dir is required", id)
	}
	j, err := l.Jail(id, limits)
	if err != nil {
		return Workspace{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Workspace{}, fmt.Errorf("vmm: workspace %s: %w", id, err)
	}
	if err := l.prepare(j); err != nil {
		return Workspace{}, fmt.Errorf("vmm: jail %s: %w", id, err)
	}
	return workspaceOf(j, dir), nil
}

// Layout implements Launcher: Workspace's paths (the chroot of id, the
// console in dir), without preparing the jail or creating dir.
func (l *JailerLauncher) Layout(id, dir string, limits Limits) (Workspace, error) {
	if dir == "" {
		return Workspace{}, fmt.Errorf("vmm: layout %s: dir is required", id)
	}
	j, err := l.Jail(id, limits)
	if err != nil {
		return Workspace{}, err
	}
	return workspaceOf(j, dir), nil
}

// ReleaseWorkspace implements Launcher: it removes the jail of id and the
// cgroups of limits (Cleanup).
func (l *JailerLauncher) ReleaseWorkspace(id string, limits Limits) error {
	return l.Cleanup(id, limits)
}

// Workspaces implements Launcher: the ids (valid instance ids only) that
// have a jail directory in JailsDir, sorted.
func (l *JailerLauncher) Workspaces() ([]string, error) {
	dir, err := l.JailsDir()
	if err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("vmm: listing jails: %w", err)
	}
	var ids []string
	for _, e := range entries {
		if e.IsDir() && ValidateInstanceID(e.Name()) == nil {
			ids = append(ids, e.Name())
		}
	}
	return ids, nil
}

// PlaceFile gives the jail its own copy of src as dst (a host path inside
// j.Root): a reflink where the filesystem supports it, else a sparse copy,
// owned by the jail's uid:gid with mode 0600. It never hard-links: the
// jail's user must not own (and so be able to change) files that live
// outside the jail, such as the shared kernel image.
func PlaceFile(ctx context.Context, j Jail, src, dst string) error {
	if err := clonePrivate(ctx, src, dst, j.UID, j.GID, nil); err != nil {
		return fmt.Errorf("placing %s in the jail: %w", src, err)
	}
	return nil
}

// clonePrivate gives uid:gid its own copy of src as dst (clone, or
// disk.Clone when nil), mode 0600.
func clonePrivate(ctx context.Context, src, dst string, uid, gid int, clone CloneFunc) error {
	if clone == nil {
		clone = disk.Clone
	}
	if err := clone(ctx, src, dst); err != nil {
		return err
	}
	return ownFile(dst, uid, gid)
}

// ownFile gives path (not what a symbolic link points to) to uid:gid, mode
// 0600.
func ownFile(path string, uid, gid int) error {
	if err := os.Lchown(path, uid, gid); err != nil {
		return err
	}
	return os.Chmod(path, 0o600)
}

// createOwned creates an empty file owned by the jail (or truncates it).
func createOwned(j Jail, path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	return ownFile(path, j.UID, j.GID)
}

// Paths returns the PathMapper of a jail: a placed file's host path maps to
// its name in the jail's root; a host path inside the root maps to the
// path below it ("/..."); a relative path is returned unchanged
// (Firecracker's working directory is the jail's root); anything else is
// refused.
func (j Jail) Paths(files []JailFile) PathMapper {
	placed := map[string]string{}
	for _, f := range files {
		placed[filepath.Clean(f.HostPath)] = "/" + f.JailName
	}
	root := filepath.Clean(j.Root)
	return func(hostPath string) (string, error) {
		if hostPath == "" {
			return "", errors.New("empty path")
		}
		if !filepath.IsAbs(hostPath) {
			return hostPath, nil
		}
		p := filepath.Clean(hostPath)
		if in, ok := placed[p]; ok {
			return in, nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
			return "", fmt.Errorf("path %s is outside the jail %s: Firecracker cannot reach it", hostPath, root)
		}
		if rel == "." {
			return "/", nil
		}
		return "/" + rel, nil
	}
}

// restrictJail takes every permission for other users away from the files
// in root: the jailer copies the exec file with its mode and writes the pid
// file world-readable, and Firecracker creates its sockets with the
// inherited umask. Symbolic links are left alone.
func restrictJail(root string) error {
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // e.g. a socket removed meanwhile
			}
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			if errors.Is(err, syscall.ENOENT) {
				return nil
			}
			return err
		}
		if st.Mode&0o007 == 0 {
			return nil
		}
		if err := syscall.Chmod(p, st.Mode&0o7770); err != nil && !errors.Is(err, syscall.ENOENT) {
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("restricting the jail's permissions: %w", err)
	}
	return nil
}

// Cleanup removes the jail of id (<chroot_base>/<exec name>/<id>) and the
// cgroup directories of limits. Call it once the VMM has exited; it is
// idempotent.
func (l *JailerLauncher) Cleanup(id string, limits Limits) error {
	j, err := l.Jail(id, limits)
	if err != nil {
		return err
	}
	return cleanupJail(j)
}

// cleanupJail removes j's directory and cgroups (rmdir, retried briefly
// while the kernel releases a cgroup whose last task just exited).
func cleanupJail(j Jail) error {
	var errs []error
	if err := os.RemoveAll(j.Dir); err != nil {
		errs = append(errs, fmt.Errorf("removing jail %s: %w", j.Dir, err))
	}
	for _, cg := range j.Cgroups {
		deadline := time.Now().Add(cgroupRemoveTimeout)
		for {
			err := syscall.Rmdir(cg)
			if err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", cg, err))
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("vmm: cleanup of jail %s: %w", j.ID, err)
	}
	return nil
}

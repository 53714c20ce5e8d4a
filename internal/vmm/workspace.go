package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
)

// CloneFunc copies the file src to the new file dst (e.g. disk.Clone: a
// reflink where the filesystem supports it, else a sparse copy).
type CloneFunc func(ctx context.Context, src, dst string) error

// Workspace is where one VMM's files live, as its launcher prepared it:
// the VMM's own directory for an unjailed VMM, the jail's chroot for a
// jailed one. It gives the caller one way, the same in both modes, to put
// a file where the VMM sees it (Place, Own) and to take out a file the VMM
// wrote (Output, Collect, Discard). Paths are host paths.
type Workspace struct {
	// ID is the VMM's instance id.
	ID string
	// Root is the directory Firecracker's relative paths resolve in (its
	// working directory): the VMM's directory or the jail's root.
	Root string
	// APISocket, LogPath, MetricsPath and VsockPath are where the VMM's
	// API socket, log, metrics and vsock socket are (inside the jail when
	// jailed).
	APISocket, LogPath, MetricsPath, VsockPath string
	// ConsolePath is the console file, in the VMM's own directory (outside
	// any jail).
	ConsolePath string
	// Jail is the VMM's jail; nil for an unjailed VMM.
	Jail *Jail
	// UID and GID are the identity the VMM runs as, which owns what it
	// reads and writes in Root.
	UID, GID int
	// Cgroup is the VMM's cgroup, for display; empty unjailed.
	Cgroup string
}

// workspaceIn returns the Workspace of an unjailed VMM id in dir.
func workspaceIn(id, dir string) Workspace {
	return Workspace{
		ID: id, Root: dir,
		APISocket:   filepath.Join(dir, DefaultAPISocketName),
		LogPath:     filepath.Join(dir, DefaultLogName),
		MetricsPath: filepath.Join(dir, DefaultMetricsName),
		VsockPath:   filepath.Join(dir, DefaultVsockName),
		ConsolePath: filepath.Join(dir, DefaultConsoleName),
		UID:         os.Getuid(), GID: os.Getgid(),
	}
}

// workspaceOf returns the Workspace of a jailed VMM whose own directory
// is dir.
func workspaceOf(j Jail, dir string) Workspace {
	return Workspace{
		ID: j.ID, Root: j.Root,
		APISocket:   j.HostPath(JailAPISocket),
		LogPath:     j.HostPath(JailLogPath),
		MetricsPath: j.HostPath(JailMetricsPath),
		VsockPath:   j.HostPath(DefaultVsockName),
		ConsolePath: filepath.Join(dir, DefaultConsoleName),
		Jail:        &j,
		UID:         j.UID, GID: j.GID,
		Cgroup: j.Cgroup,
	}
}

// Path returns the host path of name, a path relative to Root (a leading
// "/" is allowed, as Firecracker sees a jail's root).
func (w Workspace) Path(name string) string {
	return filepath.Join(w.Root, strings.TrimPrefix(name, "/"))
}

// Own makes path, a file in Root, the VMM's: in a jail it goes to the
// jail's user with mode 0600; unjailed it is left as it is.
func (w Workspace) Own(path string) error {
	if w.Jail == nil {
		return nil
	}
	if err := ownFile(path, w.UID, w.GID); err != nil {
		return fmt.Errorf("vmm: giving %s to the jail: %w", path, err)
	}
	return nil
}

// Place puts the host file src at name in Root. Unjailed, a shared file
// is hard-linked (copied with clone when linking fails, e.g. across file
// systems) and a private one copied with clone. In a jail the VMM always
// gets its own copy owned by the jail's user (Own): the jail must never
// own, and so be able to change, a file that also lives outside it. A nil
// clone means disk.Clone.
func (w Workspace) Place(ctx context.Context, src, name string, share bool, clone CloneFunc) error {
	dst := w.Path(name)
	if w.Jail != nil {
		if err := clonePrivate(ctx, src, dst, w.UID, w.GID, clone); err != nil {
			return fmt.Errorf("vmm: placing %s in the jail: %w", src, err)
		}
		return nil
	}
	if clone == nil {
		clone = disk.Clone
	}
	if share {
		lerr := os.Link(src, dst)
		if lerr == nil {
			return nil
		}
		if err := clone(ctx, src, dst); err != nil {
			return fmt.Errorf("vmm: linking (%v) or copying %s: %w", lerr, src, err)
		}
		return nil
	}
	if err := clone(ctx, src, dst); err != nil {
		return fmt.Errorf("vmm: copying %s: %w", src, err)
	}
	return nil
}

// Output returns the host path where the VMM must write a file that the
// daemon then keeps at dst (a host path the VMM may not reach): dst itself
// unjailed; in a jail the path of name in Root, after removing whatever
// was there (a link left by a restore must not be written through). Hand
// the result to Collect once the VMM has written it, and to Discard when
// giving up.
func (w Workspace) Output(name, dst string) (string, error) {
	if w.Jail == nil {
		return dst, nil
	}
	p := w.Path(name)
	if err := removeFile(p); err != nil {
		return "", fmt.Errorf("vmm: preparing %s in the jail: %w", p, err)
	}
	return p, nil
}

// Collect moves a file the VMM wrote at writePath (from Output) to dst:
// nothing to do unjailed; in a jail a rename (a copy with clone and a
// removal across file systems), after which the file belongs to the
// daemon's user. A nil clone means disk.Clone.
func (w Workspace) Collect(ctx context.Context, writePath, dst string, clone CloneFunc) error {
	if w.Jail == nil || writePath == dst {
		return nil
	}
	if clone == nil {
		clone = disk.Clone
	}
	if err := os.Rename(writePath, dst); err != nil {
		if !errors.Is(err, syscall.EXDEV) {
			return fmt.Errorf("vmm: moving %s out of the jail: %w", writePath, err)
		}
		if err := clone(ctx, writePath, dst); err != nil {
			return fmt.Errorf("vmm: copying %s out of the jail: %w", writePath, err)
		}
		if err := os.Remove(writePath); err != nil {
			return fmt.Errorf("vmm: moving %s out of the jail: %w", writePath, err)
		}
	}
	if err := os.Lchown(dst, os.Getuid(), os.Getgid()); err != nil {
		return fmt.Errorf("vmm: moving %s out of the jail: %w", writePath, err)
	}
	return nil
}

// Discard removes what the VMM may have left at writePath (from Output)
// in a jail; unjailed writePath is the caller's own dst and is left alone.
// A missing file is not an error.
func (w Workspace) Discard(writePath string) error {
	if w.Jail == nil {
		return nil
	}
	if err := removeFile(writePath); err != nil {
		return fmt.Errorf("vmm: %w", err)
	}
	return nil
}

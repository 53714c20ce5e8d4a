package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/firecracker-vmm/firecracker-vmm/internal/disk"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// Names of a new sandbox's kernel and initrd in its VMM's working
// directory (the sandbox directory, or the jail's root). Firecracker is
// given these relative names, never the request's paths.
const (
	KernelName = vmm.JailKernelName // vmlinux
	InitrdName = vmm.JailInitrdName // initrd
)

// placeBootFiles places the plan's kernel and initrd in ws (placeBootFile)
// and returns the names the VM spec gives them (the initrd's empty
// without one).
func placeBootFiles(ctx context.Context, ws vmm.Workspace, p *plan, log *slog.Logger) (kernel, initrd string, err error) {
	files := []struct {
		f    *os.File
		name string
		out  *string
	}{{p.kernelFile, KernelName, &kernel}, {p.initrdFile, InitrdName, &initrd}}
	for _, bf := range files {
		if bf.f == nil {
			continue
		}
		how, err := placeBootFile(ctx, ws, bf.f, bf.name)
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return "", "", fmt.Errorf("create: placing the %s: %w", bf.name, err)
		}
		log.Debug("boot file placed", "source", bf.f.Name(), "name", bf.name, "method", how)
		*bf.out = bf.name
	}
	return kernel, initrd, nil
}

// placeBootFile puts f, a checked and still open kernel or initrd, at
// name in ws, from the descriptor: Firecracker then reads exactly the
// file that was checked, whatever has become of its path since (a path
// swapped for a symlink to a secret after the check is never reopened).
//
// Unjailed, the file is hard-linked from the descriptor (cheap; a copy,
// reflinked where possible, when the link fails, e.g. across file
// systems). In a jail the VMM gets its own copy owned by the jail's user,
// as every file placed in a jail: the jail must never own, nor have
// restrictJail change the mode of, a file that also lives outside it.
// It returns how the file was placed, for the log.
func placeBootFile(ctx context.Context, ws vmm.Workspace, f *os.File, name string) (string, error) {
	dst := ws.Path(name)
	if ws.Jail == nil {
		lerr := linkFD(f, dst)
		if lerr == nil {
			return "link", nil
		}
		method, err := disk.CloneFile(ctx, f, dst, disk.Options{NoSync: true})
		if err != nil {
			return "", fmt.Errorf("linking (%v) or copying: %w", lerr, err)
		}
		return string(method), nil
	}
	method, err := disk.CloneFile(ctx, f, dst, disk.Options{NoSync: true})
	if err != nil {
		return "", err
	}
	if err := ws.Own(dst); err != nil {
		return "", err
	}
	return string(method), nil
}

// linkFD makes dst a new hard link to the open file f, through its
// /proc/self/fd entry (linkat with AT_SYMLINK_FOLLOW links the open
// inode, not whatever the file's path names now).
func linkFD(f *os.File, dst string) error {
	src := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	for {
		err := unix.Linkat(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.AT_SYMLINK_FOLLOW)
		if !errors.Is(err, unix.EINTR) {
			if err != nil {
				return &os.LinkError{Op: "linkat", Old: src, New: dst, Err: err}
			}
			return nil
		}
	}
}

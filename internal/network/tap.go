package network

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// createTAP creates the persistent TAP device name in the network namespace
// of the calling thread (TUNSETIFF creates the device in the namespace of
// the task that opened /dev/net/tun). It is created with the flags
// Firecracker opens it with (IFF_TAP|IFF_NO_PI|IFF_VNET_HDR), single queue,
// so Firecracker, the emulator or a test can attach to it later. An owner or
// group > 0 is set on the device (TUNSETOWNER, TUNSETGROUP) so that a
// Firecracker that dropped to that uid/gid (the jailer) may attach it;
// 0 or a negative value leaves it unset.
func createTAP(name string, owner, group int) error {
	req, err := unix.NewIfreq(name)
	if err != nil {
		return fmt.Errorf("tap name %q: %w", name, err)
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/net/tun: %w", err)
	}
	defer unix.Close(fd)
	req.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, req); err != nil {
		return fmt.Errorf("create tap %s: TUNSETIFF: %w", name, err)
	}
	if owner > 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOWNER, owner); err != nil {
			return fmt.Errorf("create tap %s: TUNSETOWNER %d: %w", name, owner, err)
		}
	}
	if group > 0 {
		if err := unix.IoctlSetInt(fd, unix.TUNSETGROUP, group); err != nil {
			return fmt.Errorf("create tap %s: TUNSETGROUP %d: %w", name, group, err)
		}
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("create tap %s: TUNSETPERSIST: %w", name, err)
	}
	return nil
}

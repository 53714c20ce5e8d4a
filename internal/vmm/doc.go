// Package vmm starts, restores, watches and stops Firecracker processes.
//
// It has three parts:
//
//   - the launcher: Args builds Firecracker's argv as a pure function, and a
//     Launcher starts a process and waits until its API socket answers;
//   - the process handle: Process wraps a pidfd (Start for our children,
//     Attach for Firecracker processes that a previous daemon started), so
//     that signals never hit a recycled pid, with exactly one watcher
//     goroutine per process;
//   - the builder: Start turns a validated VMSpec into a running microVM
//     through the API (machine-config, boot-source, drives, network
//     interfaces, vsock, InstanceStart), Restore loads a snapshot into a fresh
//     process, and VM offers pause/resume/snapshot/shutdown/kill.
//
// # The jailer seam
//
// Everything that depends on how Firecracker is executed goes through the
// Launcher interface. A Launcher receives host paths in a LaunchRequest and
// returns a Launched value holding the Process, the host path of the API
// socket and a PathMapper that translates a host path into the path
// Firecracker must be given in API calls. DirectLauncher runs Firecracker
// directly and maps paths to themselves. A future JailerLauncher will run the
// jailer, return the socket inside the chroot and map host paths into the
// jail (after linking the files there); Start, Restore and VM only ever use
// the interface, so adding it changes no caller.
//
// # Process lifetime
//
// Processes are started without a context and in their own session
// (Setsid), so they outlive the caller and the daemon; contexts only bound
// the calls that start, configure or stop them. The child's environment is
// PATH (from the calling process) plus Config.Env: the parent environment is
// not inherited wholesale. Firecracker never removes its API socket or vsock
// socket; this package removes stale ones before starting and removes them
// again after the process ended (Shutdown, Kill, Wait, failed Start/Restore).
//
// This package imports internal/firecracker and the standard library (plus
// golang.org/x/sys/unix); it must not import daemon or transport packages.
package vmm

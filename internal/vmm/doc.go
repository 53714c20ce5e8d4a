// Package vmm starts, restores, watches and stops Firecracker processes.
//
// It has these parts:
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
//     process, Adopt takes over a VMM a previous daemon started (after
//     verifying its identity: pid, process start time, "--id" on its
//     command line, GET / on its socket), and VM offers
//     describe/pause/resume/snapshot/shutdown/kill, the same whichever of
//     the three built it;
//   - identity: ProcessStartTime, Cwd, FindByCwd and HasInstanceID read
//     what /proc says about a process, and KillStrays/KillVerified kill
//     VMMs no record owns without ever signalling a recycled pid.
//
// # The jailer seam
//
// Everything that depends on how Firecracker is executed goes through the
// Launcher interface. A Launcher receives host paths in a LaunchRequest (or,
// to adopt, an AdoptRequest) and returns a Launched value holding the
// Process, the host path of the API socket and a PathMapper that translates
// a host path into the path Firecracker must be given in API calls.
// DirectLauncher runs Firecracker directly and maps paths to themselves.
// JailerLauncher runs the jailer, keeps the socket inside the chroot and
// maps host paths into the jail (after copying the files there). A
// Launcher's Workspace says where a VMM's files live (its directory, or
// its chroot) and puts files there and takes them out the same way in both
// modes; FindVMMs and Workspaces find what a crash left. Start, Restore,
// Adopt and VM only ever use the interface.
//
// # Exit status
//
// A VMM that is not our child (adopted, or attached through the jailer's
// pid file) reports no exit status; VM.Wait then reads the code from the
// last line Firecracker logs as it exits ("Firecracker exiting
// successfully. exit_code=0" or "Firecracker exiting with error.
// exit_code=N", src/firecracker/src/main.rs), see ExitStatus.FromLog.
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
// This package imports internal/firecracker, internal/disk,
// internal/errdefs and the standard library (plus golang.org/x/sys/unix);
// it must not import daemon or transport packages.
package vmm

// Package jailemu implements jailer-emulator, a stand-in for Firecracker's
// v1.16.1 jailer that really performs the isolation steps a root process can
// do on a host without KVM, then execs the Firecracker emulator inside the
// jail. The daemon's jailer mode is thereby exercised for real except for
// KVM itself.
//
// # What it reproduces
//
//   - The command line: --id, --exec-file, --uid, --gid, --chroot-base-dir
//     (default /srv/jailer), --netns, --daemonize, --new-pid-ns, --cgroup
//     (repeatable), --cgroup-version (1 or 2, default 1), --parent-cgroup
//     (default: the exec file's name), --resource-limit (repeatable,
//     fsize=N or no-file=N), --version, --help, then "--" and Firecracker's
//     own arguments. Flags are "--name value" as two words; unknown,
//     duplicated or value-less flags are errors. Every error prints a
//     message on stderr and exits 1.
//   - The checks: the id rule (1–64 bytes, ASCII alphanumeric or '-'), the
//     exec file must be a regular file (symlinks are resolved and the jail
//     uses the resolved file's name), the chroot base must exist and be a
//     directory, uid and gid are required, --cgroup is
//     "<controller>.<property>=<value>" with a non-empty value and no path
//     components, --parent-cgroup is relative without "." or ".."
//     components.
//   - The chroot <base>/<exec name>/<id>/root with /, /dev, /dev/net and
//     /run at mode 0700 owned by uid:gid; a copy of the exec file (opened
//     O_NOFOLLOW; an existing hard-linked target is refused) owned by
//     uid:gid; device nodes /dev/kvm (10,232), /dev/net/tun (10,200),
//     /dev/urandom (1,9) and /dev/userfaultfd (when the host has it), mode
//     0600 owned by uid:gid. Existing device nodes mean the jail is not
//     fresh: error.
//   - Cgroups, found through /proc/self/mountinfo. v1: for every controller
//     named in --cgroup, <mount>/<parent>/<id> is created (cpuset.cpus and
//     cpuset.mems inherited from the parent when empty), the values are
//     written and the process joins it. v2: <unified>/<parent>/<id>, the
//     needed controllers are enabled in cgroup.subtree_control from the
//     root down (a controller the hierarchy does not offer is an error),
//     values written, the process joins via cgroup.procs; without --cgroup
//     it only joins an existing <unified>/<parent> (refused when that
//     cgroup delegates domain controllers) and silently goes on when it
//     does not exist.
//   - setrlimit for fsize and no-file (no-file defaults to 2048).
//   - --netns is joined with setns before the chroot.
//   - --new-pid-ns and --daemonize: the process that becomes Firecracker is
//     a re-executed copy of the emulator, started with CLONE_NEWPID and/or
//     setsid (stdio on /dev/null when daemonizing); the parent writes its
//     pid to <chroot>/<exec name>.pid and exits 0. Otherwise the jailer
//     writes its own pid there and execs in place. The pid file is created
//     exclusively, decimal without newline.
//   - A private mount namespace, the jail root bind-mounted onto itself and
//     pivot_root into it (chroot when pivot_root is refused), cwd "/";
//     every fd above 2 is marked close-on-exec, supplementary groups are
//     dropped, then gid and uid, and /<exec name> is executed with --id
//     <id> --start-time-us <t> --start-time-cpu-us <t> --parent-cpu-time-us
//     <t> and the arguments after "--".
//
// # Deviations
//
//   - The environment is cleared except variables starting with FCEMU_
//     (the Firecracker emulator's knobs), which are passed through.
//   - --id among the Firecracker arguments is refused by the jailer
//     emulator (exit 1); the real jailer passes it on and Firecracker then
//     exits 153 for a duplicated flag.
//   - In cgroup v1 the process joins through cgroup.procs instead of tasks:
//     a Go process is multi-threaded and tasks would move one thread only.
//   - Device nodes are created before the mount namespace is entered (on
//     the host path of the jail) rather than after pivot_root; the result is
//     the same.
//   - The aarch64 sysfs copies and seccomp-related details are not
//     reproduced; cgroup and chroot cleanup stays the caller's job, as with
//     the real jailer.
package jailemu

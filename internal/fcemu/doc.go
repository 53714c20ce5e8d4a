// Package fcemu implements firecracker-emulator, a strict stand-in for the
// Firecracker v1.16.1 binary on hosts without KVM. It is used by the
// project's tests and benchmarks and by users trying the daemon without
// KVM; a driver bug should fail here rather than on a KVM host.
//
// # What it reproduces
//
//   - The command line: every v1.16.1 flag, "--name value" as two words
//     ("--name=value" is unknown), unknown/duplicate/value-less flags exit
//     153, a bad --level exits 152, --help/-h and --version short-circuit,
//     words after "--" are ignored, --no-api requires --config-file,
//     --seccomp-filter excludes --no-seccomp. An invalid --id, unreadable
//     --config-file/--metadata or non-numeric size flags die by SIGABRT.
//     --version prints "Firecracker v1.16.1", --snapshot-version "v10.0.0",
//     --describe-snapshot the version stored in a vmstate file.
//   - Process behaviour: the API socket must not exist ("Failed to open the
//     API socket at: ..." and exit 1) and is never removed, nor is the
//     vsock socket. SIGTERM/SIGINT/SIGQUIT kill the process (no handler),
//     SIGHUP flushes metrics and exits 156, SIGPIPE is ignored. Log and
//     metrics files are opened O_RDWR|O_CREAT|O_NONBLOCK without O_TRUNC or
//     O_APPEND. Guest serial output goes to stdout (or serial_out_path).
//     Every exit of a running VMM (a guest reset, a failed restore, an
//     injected exit, a failed --config-file build or API socket bind) logs
//     Firecracker's last line, "Firecracker exiting successfully.
//     exit_code=0" (Info) or "Firecracker exiting with error. exit_code=N"
//     (Error); SIGHUP, like Firecracker's signal handlers, exits without it.
//   - The micro-http transport: HTTP/1.0 and 1.1, keep-alive, GET, PUT,
//     PATCH and DELETE only, at most 10 connections (the 11th gets the
//     canned 503), Content-Length bodies only, the payload limit,
//     Expect: 100-continue, empty reason phrases, the Server, Connection
//     and Deprecation headers, { "error": ... } transport error bodies.
//     Requests are handled one at a time.
//   - The API: every v1.16.1 endpoint with serde-like strict decoding
//     (unknown fields, required fields, integer widths, enums), the routing
//     and id errors, the pre-boot/post-boot state rules, the sticky
//     boot-path flag that forbids a later snapshot load, resource checks
//     at PUT time (kernel/initrd/drive files opened, drives O_RDONLY or
//     O_RDWR and kept open, TAPs attached with TUNSETIFF
//     IFF_TAP|IFF_NO_PI|IFF_VNET_HDR and a 12-byte virtio-net header
//     (TUNSETVNETHDRSZ), vsock socket bound), balloon/memory
//     ordering, MMDS data store with merge patch and 413 on the size limit,
//     device hot-plug with --enable-pci.
//   - Snapshots: create (Paused only; Full or Diff) writes a vmstate file
//     framed like Firecracker's (little-endian magic 0x0710198486640000,
//     length-prefixed format version "10.0.0", a JSON state, CRC64-ECMA of
//     everything before) and a sparse memory file of mem_size_mib MiB. Load
//     (fresh process only) checks magic, CRC, size and version, the memory
//     file or the UFFD handler (regions JSON plus a memfd over SCM_RIGHTS),
//     reopens drives, TAPs (network_overrides) and the vsock socket
//     (vsock_override); any restore failure answers 400 then exits 1.
//   - Guest behaviour: InstanceStart prints a few boot lines; after
//     SendCtrlAltDel the process exits 0 (after FCEMU_SHUTDOWN_DELAY_MS,
//     default 50) when the effective boot args contain reboot=k, otherwise
//     the guest halts and the process stays up; a paused VM reboots on
//     resume.
//   - The guest's network, as a booted Linux guest answers on it: the
//     static address of the kernel's ip= argument (the last one before
//     "--"; ip=<client>:<server>:<gw>:<netmask>:<host>:<device>:...) goes
//     to the NIC its device field names (ethN = the N-th NIC in API order,
//     empty = the first); each NIC has its guest_mac or, like the Linux
//     virtio-net driver, a random locally administered MAC chosen at boot.
//     At boot the TAP gets the offload flags a Linux guest's acked features
//     give (TUNSETOFFLOAD CSUM|TSO4|TSO6|UFO). While the VM runs, one
//     goroutine per NIC with an address reads frames from its TAP and
//     answers ARP requests for the address and ICMP echo requests to it
//     (to the requester's MAC); everything else is dropped. Nothing is
//     answered before boot, while paused (frames queue in the TAP and are
//     taken on resume), after a halt, or without ip=. MACs and the address
//     are saved in the vmstate, so a loaded guest answers at the same
//     address with the same MAC on its (possibly overridden) TAP.
//   - Metrics lines (utc_timestamp_ms first, all groups present) at
//     configuration, on FlushMetrics, on SIGHUP and every 60 s after boot
//     while not paused.
//
// # What it does not reproduce
//
// There is no KVM and no guest: no kernel is loaded or parsed, vCPUs do not
// run, disks are opened but never read or written, memory files contain a
// marker page instead of guest memory. The guest network is only ARP and
// ICMP echo for the ip= address (see [NetDevice]): no DHCP or other
// autoconfiguration, no IPv6, no fragment reassembly, no TCP or UDP, no
// gratuitous ARP at boot, no routing (replies go to the request's source
// MAC), and the mtu, rate limiters and MMDS interception are not applied
// to frames. Vsock connections get their
// CONNECT line read and are closed, as no guest listens. MMDS is not served
// to a guest. Seccomp filters are checked for existence only; the jailer is
// not part of the emulator; rate limiters, balloon statistics and metrics
// counters are stored or zero rather than measured. Log rate limiting and
// the boot timer are not emulated.
//
// # Environment (keeps the command line identical to Firecracker's)
//
//   - FCEMU_SKIP_TAP=1: do not open TAPs (names are still validated); the
//     guest network then answers nothing.
//   - FCEMU_BOOT_DELAY_MS, FCEMU_LOAD_DELAY_MS: delay the answers of
//     InstanceStart and snapshot load.
//   - FCEMU_SHUTDOWN_DELAY_MS: delay between SendCtrlAltDel and exit 0.
//   - FCEMU_IGNORE_CTRL_ALT_DEL=1: the guest ignores SendCtrlAltDel.
//   - FCEMU_FAULTS: fault injection rules, separated by ';' (whitespace
//     around rules is ignored). A CALL is "METHOD /path", optionally
//     followed by "#discriminator" (the action_type of PUT /actions or the
//     state of PATCH /vm) and "@N" (only the N-th matching call, 1-based);
//     a path ending in '*' matches by prefix.
//
// The FCEMU_FAULTS rules are:
//
//	fail CALL[=message]         answer 400 {"fault_message": message}
//	                            (default "injected fault"), change nothing
//	exit CALL[=code]            exit at once with code (default 1), no answer
//	hang CALL                   never answer (the serial API hangs)
//	exit-after MS[=code]        exit MS ms after start (default code 1)
//	exit-after-boot MS[=code]   exit MS ms after InstanceStart or load
//
// Example: "fail PUT /drives/*=disk on fire; exit PUT /actions#InstanceStart@2=3".
// A malformed value is reported on stderr and the process exits 1.
//
// The package exports [Main]; cmd/firecracker-emulator only calls it.
package fcemu

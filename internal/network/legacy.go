package network

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Sandboxes attached by a daemon from before names were scoped by bridge
// live in vmm-<id> behind the host veth vh<id> (or vh and a hash), and may
// still run when the daemon is upgraded with on_shutdown = "leave". Verify
// accepts them and Detach removes them, so that an upgrade neither fails
// nor leaks them. Ids are random, so these names are another daemon's only
// by a negligible collision.

// legacyNetnsName is the unscoped namespace name of sandbox id.
func legacyNetnsName(id string) string { return NetnsPrefix + id }

// legacyHostVeth is the unscoped host veth name of sandbox id.
func legacyHostVeth(id string) string {
	if len(HostVethPrefix)+len(id) < unix.IFNAMSIZ {
		return HostVethPrefix + id
	}
	return fmt.Sprintf("%s%013x", HostVethPrefix, fnv1a(id)&(1<<52-1))
}

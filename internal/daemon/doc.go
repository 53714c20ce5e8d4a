// Package daemon is vmm-daemon's composition root: it loads the TOML
// configuration, builds the event exchange, the Firecracker launcher, the
// sandbox manager and the gRPC servers, listens on the unix socket (and
// optionally on TCP with mutual TLS), and shuts everything down in order
// when its context ends.
//
// Only cmd/vmm-daemon should import this package.
package daemon

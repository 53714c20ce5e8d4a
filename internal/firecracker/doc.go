// Package firecracker is a typed client for the HTTP API that a Firecracker
// VMM (v1.16.1) serves on its unix socket, together with the JSON models of
// that API.
//
// The models follow Firecracker's swagger description field for field:
// required fields are always sent, optional scalars are pointers (or use
// omitempty where the zero value cannot be meant) so that unset fields are
// omitted, enums are typed string constants, and fields that Firecracker
// marks as deprecated (cpu_template, vsock_id, mem_file_path,
// enable_diff_snapshots) are not modelled at all, so they can never be sent.
//
// A Client keeps a tiny keep-alive pool of connections to the socket
// (Firecracker accepts at most 10 connections and serves one request at a
// time), always sends Content-Length with a body and never applies a
// client-wide timeout: every method takes a context.Context that bounds the
// call, which matters for snapshot calls that can take long.
//
// Failed calls return an *APIError carrying the HTTP status and
// Firecracker's fault message, decoded from either the application shape
// {"fault_message": …} or the transport shape {"error": …}.
//
// This package uses only the standard library, does no logging and reads no
// environment variables. It must not import other packages of this module.
package firecracker

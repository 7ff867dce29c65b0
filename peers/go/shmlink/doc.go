// Package shmlink is a Go implementation of the shmlink wire protocol,
// version 1 (docs/PROTOCOL.md): sealed memfd regions passed with small
// frames over AF_UNIX SOCK_SEQPACKET sockets.
//
// A Region is a memory file sealed against shrinking and growing, mapped
// into this process; Freeze adds F_SEAL_WRITE. An Endpoint is one side of a
// connection: it sends our HELLO when created, learns the peer's limits from
// its HELLO, sends MESSAGE frames (NEW descriptors only the first time a
// region goes out, ids 1, 2, 3, ... never reused) and RELEASE frames, and
// applies every receiver check of PROTOCOL.md §5.3 and §7 to what arrives.
// Any failure of the connection closes the descriptors of the offending
// record, shuts the socket down both ways and drops the binding tables;
// errors are *Error values whose Code is the ERR_SHMLINK_* code of §7.
//
// The endpoint works on the raw socket with blocking system calls bounded
// by SO_RCVTIMEO/SO_SNDTIMEO, which keeps MSG_CTRUNC, MSG_TRUNC and the
// one-record-one-frame rule under direct control and costs one system call
// per frame. Steady-state sends and receives do not allocate.
package shmlink

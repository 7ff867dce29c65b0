package shmlink

import (
	"errors"
	"fmt"
)

// Error codes. The first group is the table of PROTOCOL.md §7 plus the
// end-of-file code named in peers/SCENARIO.md; the second group is for
// failures that are local to this process and that the documents do not
// name (they never travel on the wire, so other peers need not agree).
const (
	CodeProtocolViolation  = "ERR_SHMLINK_PROTOCOL_VIOLATION"
	CodePeerIncompatible   = "ERR_SHMLINK_PEER_INCOMPATIBLE"
	CodeRegionNotMemfd     = "ERR_SHMLINK_REGION_NOT_MEMFD"
	CodeRegionUnsealed     = "ERR_SHMLINK_REGION_UNSEALED"
	CodeRegionSizeMismatch = "ERR_SHMLINK_REGION_SIZE_MISMATCH"
	CodeFdsTruncated       = "ERR_SHMLINK_FDS_TRUNCATED"
	CodePeerClosed         = "ERR_SHMLINK_PEER_CLOSED"

	// CodeClosed: the connection already failed or was closed locally;
	// PROTOCOL.md §7 says later operations "report that the connection is
	// closed" without naming a code.
	CodeClosed = "ERR_SHMLINK_CLOSED"
	// CodeTimeout: nothing happened within Options.Timeout. Not fatal.
	CodeTimeout = "ERR_SHMLINK_TIMEOUT"
	// CodeInvalidArgument: the caller asked for something the protocol
	// forbids (too many regions for the peer, payload too large, unbound
	// region released, write to a frozen region). Not fatal.
	CodeInvalidArgument = "ERR_SHMLINK_INVALID_ARGUMENT"
	// CodeIO: a system call failed for a local reason (ENOMEM, EMFILE...).
	CodeIO = "ERR_SHMLINK_IO"
)

// Error is the only error type the package returns. Code is one of the
// Code* constants; callers compare Code, never the message.
type Error struct {
	Code string
	Msg  string
	Err  error // underlying cause (usually a syscall.Errno), may be nil
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%s: %s: %v", e.Code, e.Msg, e.Err)
	}
	return e.Code + ": " + e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// CodeOf returns the Code of err if it is (or wraps) an *Error, else "".
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func newErr(code, msg string, cause error) *Error {
	return &Error{Code: code, Msg: msg, Err: cause}
}

func violation(format string, args ...any) *Error {
	return &Error{Code: CodeProtocolViolation, Msg: fmt.Sprintf(format, args...)}
}

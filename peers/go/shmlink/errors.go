package shmlink

import (
	"errors"
	"fmt"
	"syscall"
)

// Code is the stable code of an [Error], one of the ERR_SHMLINK_* strings that every
// shmlink library uses (docs/ERRORS.md). Branch on codes, never on messages.
//
// A Code is also an error value, so errors.Is matches an error against a code:
//
//	if errors.Is(err, shmlink.CodePeerClosed) { ... }
type Code string

// Error implements error, so that a Code can be the target of errors.Is.
func (c Code) Error() string { return string(c) }

// The codes, in the order docs/ERRORS.md lists them. A few describe conditions that
// cannot arise in Go; they are listed so that every code of every shmlink library has a
// name here (see each constant).
const (
	// CodeClosed: the endpoint or server was closed with Close, or closed itself after
	// a failure it already reported.
	CodeClosed Code = "ERR_SHMLINK_CLOSED"
	// CodePeerClosed: the peer closed the connection (or its process ended). Messages it
	// sent before are delivered first; later calls keep reporting this code.
	CodePeerClosed Code = "ERR_SHMLINK_PEER_CLOSED"
	// CodePeerRejected: the peer's credentials (SO_PEERCRED) do not pass the filter
	// (ConnectOptions.Server).
	CodePeerRejected Code = "ERR_SHMLINK_PEER_REJECTED"
	// CodeWouldBlock: Connect found the listener's backlog full (EAGAIN).
	CodeWouldBlock Code = "ERR_SHMLINK_WOULD_BLOCK"
	// CodeTimedOut: a timeout ran out (RecvTimeout, SendOptions.Timeout,
	// ConnectOptions.Timeout, AcceptTimeout). The connection is intact.
	CodeTimedOut Code = "ERR_SHMLINK_TIMED_OUT"
	// CodeProtocolViolation: the peer broke a rule of docs/PROTOCOL.md; the connection
	// was closed.
	CodeProtocolViolation Code = "ERR_SHMLINK_PROTOCOL_VIOLATION"
	// CodePeerIncompatible: the peer's first frame is not a shmlink HELLO of version 1.
	CodePeerIncompatible Code = "ERR_SHMLINK_PEER_INCOMPATIBLE"
	// CodeLimitExceeded: the peer went over a local limit ([Limits],
	// [SetProcessLimits]); the connection was closed before anything was mapped.
	CodeLimitExceeded Code = "ERR_SHMLINK_LIMIT_EXCEEDED"
	// CodeRegionUnsealed: a received memory file lacks F_SEAL_SHRINK/F_SEAL_GROW, or is
	// marked frozen without F_SEAL_WRITE.
	CodeRegionUnsealed Code = "ERR_SHMLINK_REGION_UNSEALED"
	// CodeRegionSizeMismatch: a received file's size differs from its descriptor's.
	CodeRegionSizeMismatch Code = "ERR_SHMLINK_REGION_SIZE_MISMATCH"
	// CodeRegionNotMemfd: the peer sent a pipe, a socket or a disk file.
	CodeRegionNotMemfd Code = "ERR_SHMLINK_REGION_NOT_MEMFD"
	// CodeRegionNotShmem: the peer sent a memory file that is not on shmem (tmpfs),
	// such as a hugetlbfs memfd.
	CodeRegionNotShmem Code = "ERR_SHMLINK_REGION_NOT_SHMEM"
	// CodeRegionWritable: a peer not trusted with writable memory (reached by Connect or
	// Listen without AcceptWritable) sent a region that is not frozen.
	CodeRegionWritable Code = "ERR_SHMLINK_REGION_WRITABLE"
	// CodeRegionTransferred: the region was sent with Transfer and has not come back.
	CodeRegionTransferred Code = "ERR_SHMLINK_REGION_TRANSFERRED"
	// CodeRegionFrozen: a write to a frozen region.
	CodeRegionFrozen Code = "ERR_SHMLINK_REGION_FROZEN"
	// CodeRegionBusy: Freeze while a peer maps the region writable; the region stays as
	// it was.
	CodeRegionBusy Code = "ERR_SHMLINK_REGION_BUSY"
	// CodeRegionClosed: the region was closed, or a closed region was attached.
	CodeRegionClosed Code = "ERR_SHMLINK_REGION_CLOSED"
	// CodeRegionTooLarge: never returned in Go (a slice holds any region that can be
	// mapped); Node uses it for copies larger than one Buffer.
	CodeRegionTooLarge Code = "ERR_SHMLINK_REGION_TOO_LARGE"
	// CodeTooManyRegions: more regions attached than the peer accepts. Nothing was sent.
	CodeTooManyRegions Code = "ERR_SHMLINK_TOO_MANY_REGIONS"
	// CodePayloadTooLarge: a payload over the peer's limit. Nothing was sent.
	CodePayloadTooLarge Code = "ERR_SHMLINK_PAYLOAD_TOO_LARGE"
	// CodeFdsTruncated: the kernel dropped descriptors from a received message (the
	// peer sent more than this side accepts, or this process is at its open-file
	// limit); the connection was closed.
	CodeFdsTruncated Code = "ERR_SHMLINK_FDS_TRUNCATED"
	// CodeInvalidArg: an argument out of range, checked before any system call; also
	// Inherited when SHMLINK_FD is unset, not a number, or not the socket.
	CodeInvalidArg Code = "ERR_SHMLINK_INVALID_ARG"
	// CodeZeroCopyUnavailable: never returned in Go (Node: runtimes that refuse
	// external buffers).
	CodeZeroCopyUnavailable Code = "ERR_SHMLINK_ZERO_COPY_UNAVAILABLE"
	// CodeUnsupported: the operating system is not Linux.
	CodeUnsupported Code = "ERR_SHMLINK_UNSUPPORTED"
	// CodeRuntime: never returned in Go (Node: a refused Node-API call).
	CodeRuntime Code = "ERR_SHMLINK_RUNTIME"
	// CodeOS: any other failed system call; Error.Syscall and Error.Errno say which.
	CodeOS Code = "ERR_SHMLINK_OS"
	// CodeBinaryNotFound: never returned in Go (Node's loader found no native binary).
	CodeBinaryNotFound Code = "ERR_SHMLINK_BINARY_NOT_FOUND"
)

// Codes lists every code, in the order of docs/ERRORS.md.
var Codes = []Code{
	CodeClosed, CodePeerClosed, CodePeerRejected, CodeWouldBlock, CodeTimedOut,
	CodeProtocolViolation, CodePeerIncompatible, CodeLimitExceeded, CodeRegionUnsealed,
	CodeRegionSizeMismatch, CodeRegionNotMemfd, CodeRegionNotShmem, CodeRegionWritable,
	CodeRegionTransferred, CodeRegionFrozen, CodeRegionBusy, CodeRegionClosed,
	CodeRegionTooLarge, CodeTooManyRegions, CodePayloadTooLarge, CodeFdsTruncated,
	CodeInvalidArg, CodeZeroCopyUnavailable, CodeUnsupported, CodeRuntime, CodeOS,
	CodeBinaryNotFound,
}

// Error is the error every function of this package returns (as error; use errors.As
// to reach it). Code says what went wrong in terms a program can branch on; the message
// says what to do about it.
type Error struct {
	// Code is one of the Code* constants.
	Code Code
	// Op is the operation that failed, such as "Endpoint.Send" or "Region.Freeze".
	Op string
	// Syscall names the system call that failed ("sendmsg", "mmap"), or is empty.
	Syscall string
	// Errno is the system call's error number, or 0.
	Errno syscall.Errno
	// Message says what happened and what to do next.
	Message string
	// Err is the cause, if any: the Errno when a system call failed.
	Err error
}

// Error formats the error as "op: syscall failed: ENAME (text); message".
func (e *Error) Error() string {
	if e.Syscall != "" {
		if e.Errno != 0 {
			return fmt.Sprintf("%s: %s failed: %s (%v); %s", e.Op, e.Syscall, errnoName(e.Errno), e.Errno, e.Message)
		}
		return fmt.Sprintf("%s: %s failed; %s", e.Op, e.Syscall, e.Message)
	}
	return e.Op + ": " + e.Message
}

// Unwrap returns the cause, so errors.Is(err, syscall.EMFILE) works.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is this error's Code, so errors.Is(err, CodeClosed) works.
func (e *Error) Is(target error) bool {
	c, ok := target.(Code)
	return ok && c == e.Code
}

// CodeOf returns the Code of err if it is or wraps an *Error, and "" otherwise.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

func newError(code Code, op, message string) *Error {
	return &Error{Code: code, Op: op, Message: message}
}

func errorf(code Code, op, format string, args ...any) *Error {
	return &Error{Code: code, Op: op, Message: fmt.Sprintf(format, args...)}
}

// sysError is a failed system call: errno and the syscall are kept, the cause wrapped.
func sysError(code Code, op, syscallName string, errno error, message string) *Error {
	e := &Error{Code: code, Op: op, Syscall: syscallName, Message: message, Err: errno}
	var no syscall.Errno
	if errors.As(errno, &no) {
		e.Errno = no
	}
	return e
}

// osError is a CodeOS failure of syscallName in op; advice says what to do.
func osError(op, syscallName string, errno error, advice string) *Error {
	return sysError(CodeOS, op, syscallName, errno, advice)
}

// during returns a copy of err reported for another operation.
func during(err error, op string) error {
	var e *Error
	if errors.As(err, &e) && e.Op != op {
		c := *e
		c.Op = op
		return &c
	}
	return err
}

func violation(format string, args ...any) *Error {
	return &Error{
		Code:    CodeProtocolViolation,
		Op:      "recv",
		Message: fmt.Sprintf(format, args...) + "; the connection was closed (docs/PROTOCOL.md §7)",
	}
}

func closedError(op string) *Error {
	return newError(CodeClosed, op, "the endpoint is closed; create or accept a new one")
}

func peerClosedError(op string) *Error {
	return newError(CodePeerClosed, op, "the peer closed the connection; regions it sent stay valid until you close them")
}

func timedOutError(op string) *Error {
	return newError(CodeTimedOut, op, "the timeout passed first")
}

func regionClosedError(op string) *Error {
	return newError(CodeRegionClosed, op, "the region is closed; create a new one")
}

func regionTransferredError(op string) *Error {
	return newError(CodeRegionTransferred, op, "the region was transferred to a peer; it is usable again when the peer sends it back, or after Reclaim once that connection has ended")
}

func invalidArg(op, format string, args ...any) *Error {
	return errorf(CodeInvalidArg, op, format, args...)
}

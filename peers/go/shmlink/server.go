package shmlink

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// ListenOptions configure Listen. The zero value is the defaults.
type ListenOptions struct {
	// Allow is who may connect (checked before anything is read); default SameUser.
	// Refused clients are shut down unread and counted in Server.Rejected.
	Allow PeerFilter
	// AcceptWritable accepts regions clients can still write; default false: frozen
	// regions only (docs/SECURITY.md).
	AcceptWritable bool
	// Limits on what each client may send; zero fields take the defaults.
	Limits Limits
	// MaxPending is how many accepted connections may wait for Accept; default 64.
	// Beyond it, clients wait in the kernel's backlog.
	MaxPending int
	// Backlog is the kernel's queue of connections not yet accepted (listen(2));
	// default 128.
	Backlog int
}

// Server is a listening socket. One goroutine accepts connections in the background,
// as Node's server does: each client that passes Allow gets this side's HELLO at once
// and waits, unread, until Accept takes it; no record is read and no region mapped
// before the application has the endpoint.
type Server struct {
	path     string
	fileID   *fileID
	file     *os.File
	raw      syscall.RawConn
	opts     ListenOptions
	limits   Limits
	pending  chan *Endpoint
	slots    chan struct{}
	done     chan struct{}
	stopped  chan struct{}
	once     sync.Once
	rejected atomic.Uint64
}

// Listen listens at path with a socket file of mode 0600 (a path starting with a NUL
// byte or "@" is a Linux abstract name, which any local user can reach: keep Allow's
// default then). A stale socket file nobody listens on is replaced; a live one is an
// error (CodeOS, EADDRINUSE).
func Listen(path string, opts *ListenOptions) (*Server, error) {
	const op = "Listen"
	var o ListenOptions
	if opts != nil {
		o = *opts
	}
	limits, err := o.Limits.resolve(op)
	if err != nil {
		return nil, err
	}
	if o.MaxPending == 0 {
		o.MaxPending = 64
	}
	if o.Backlog == 0 {
		o.Backlog = 128
	}
	if o.MaxPending < 0 || o.Backlog < 0 {
		return nil, invalidArg(op, "ListenOptions.MaxPending and Backlog must be positive")
	}
	fd, id, err := listenAt(path, o.Backlog, op)
	if err != nil {
		return nil, err
	}
	file := os.NewFile(uintptr(fd), "shmlink-listener")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		removeIfSame(path, id)
		return nil, errorf(CodeOS, op, "the socket cannot be watched: %v", err)
	}
	s := &Server{
		path:    path,
		fileID:  id,
		file:    file,
		raw:     raw,
		opts:    o,
		limits:  limits,
		pending: make(chan *Endpoint, o.MaxPending),
		slots:   make(chan struct{}, o.MaxPending),
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	for range o.MaxPending {
		s.slots <- struct{}{}
	}
	go s.acceptLoop()
	return s, nil
}

// Path is the path the server listens at.
func (s *Server) Path() string { return s.path }

// Rejected is how many connections the Allow filter refused so far.
func (s *Server) Rejected() uint64 { return s.rejected.Load() }

func (s *Server) acceptLoop() {
	defer close(s.stopped)
	for {
		select {
		case <-s.slots:
		case <-s.done:
			return
		}
		fd, ok := s.acceptOne()
		if !ok {
			return
		}
		ep := s.admit(fd)
		if ep == nil {
			s.slots <- struct{}{}
			continue
		}
		select {
		case s.pending <- ep:
		case <-s.done:
			ep.Close()
			return
		}
	}
}

// acceptOne waits for a connection; false once the server is closed.
func (s *Server) acceptOne() (int, bool) {
	for {
		var fd int
		var aerr error
		err := s.raw.Read(func(lfd uintptr) bool {
			fd, aerr = acceptOne(int(lfd))
			return !isWouldBlock(aerr)
		})
		if err != nil {
			return -1, false
		}
		if aerr == nil {
			return fd, true
		}
		// Out of descriptors or memory: wait a little rather than spin, as net/http does.
		select {
		case <-time.After(50 * time.Millisecond):
		case <-s.done:
			return -1, false
		}
	}
}

// admit checks a connection against Allow and starts its endpoint; nil if refused.
func (s *Server) admit(fd int) *Endpoint {
	peer, err := peerCredentials(fd, "accept")
	if err != nil || !s.opts.Allow.Admits(peer) {
		s.rejected.Add(1)
		shutdownBoth(fd)
		closeFd(fd)
		return nil
	}
	// A connection whose HELLO cannot even be sent is already gone; drop it.
	ep, err := newEndpoint(fd, s.limits, s.opts.AcceptWritable, 0, "accept")
	if err != nil {
		return nil
	}
	return ep
}

// Accept returns the next connection, waiting as long as it takes; CodeClosed once the
// server is closed.
func (s *Server) Accept() (*Endpoint, error) {
	return s.accept(nil)
}

// AcceptTimeout is Accept waiting at most timeout (CodeTimedOut then).
func (s *Server) AcceptTimeout(timeout time.Duration) (*Endpoint, error) {
	if timeout < 0 {
		return nil, invalidArg("Server.AcceptTimeout", "the timeout must not be negative")
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	return s.accept(t.C)
}

func (s *Server) accept(expire <-chan time.Time) (*Endpoint, error) {
	select {
	case <-s.done:
		return nil, closedServer()
	default:
	}
	select {
	case ep := <-s.pending:
		s.slots <- struct{}{}
		return ep, nil
	case <-s.done:
		return nil, closedServer()
	case <-expire:
		return nil, timedOutError("Server.Accept")
	}
}

func closedServer() error {
	return newError(CodeClosed, "Server.Accept", "the server is closed; listen again to accept connections")
}

// Close stops listening: the socket file is removed (if it is still this server's),
// connections not yet taken by Accept are closed, and waiting Accepts return CodeClosed.
// Connections already accepted stay open. Idempotent; always nil.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.done)
		_ = s.raw.Control(func(fd uintptr) { shutdownBoth(int(fd)) })
		s.file.Close()
		<-s.stopped
		removeIfSame(s.path, s.fileID)
		for {
			select {
			case ep := <-s.pending:
				ep.Close()
			default:
				return
			}
		}
	})
	return nil
}

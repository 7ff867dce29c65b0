// Package shmlink is zero-copy IPC over shared memory on Linux, the Go library of
// shmlink (https://github.com/shmlink/shmlink). Processes hand each other sealed memory
// files ("regions") with small messages over AF_UNIX SOCK_SEQPACKET sockets; the
// receiving side maps the same memory instead of receiving a copy. It speaks the wire
// protocol of docs/PROTOCOL.md, version 1, with every other shmlink library (Node,
// Python, Rust, C), and mirrors the Node API:
//
//	Node                                   Go
//	Region.create(size)                    NewRegion(size)
//	region.bytes, read, readInto, write    r.Bytes(), r.Read, r.ReadInto, r.Write
//	region.freeze(), reclaim(), close()    r.Freeze(), r.Reclaim(), r.Close()
//	Endpoint.pair()                        Pair(nil)
//	Endpoint.connect(path, opts)           Connect(path, &ConnectOptions{...})
//	Endpoint.listen(path, opts)            Listen(path, &ListenOptions{...})
//	Endpoint.inherited(), fromFd(fd)       Inherited(nil), FromFd(fd, nil)
//	endpoint.send(p, {regions, transfer})  e.Send(p, &SendOptions{Regions, Transfer})
//	endpoint.recvSync({timeoutMs})         e.Recv(), e.RecvTimeout(d)
//	endpoint.peer, stats(), regionId(r)    e.Peer(), e.Stats(), e.RegionID(r)
//	processStats(), setProcessLimits()     GetProcessStats(), SetProcessLimits()
//
// # A child of a Node parent
//
// A Node program starts this one with spawnWithEndpoint; SHMLINK_FD names the socket
// (it is not always fd 3: with 'ipc' in the parent's stdio it is fd 4):
//
//	ep, err := shmlink.Inherited(nil)
//	if err != nil {
//		log.Fatal(err) // ERR_SHMLINK_INVALID_ARG: not started by spawnWithEndpoint
//	}
//	defer ep.Close()
//	for m, err := range ep.Messages() {
//		if err != nil {
//			log.Fatal(err)
//		}
//		data, _ := m.Regions[0].Read(0, m.Regions[0].Size()) // a copy
//		ep.Send([]byte(fmt.Sprint(len(data))), nil)
//	}
//
// # Errors
//
// Every error is an *Error with a Code (the ERR_SHMLINK_* strings of docs/ERRORS.md),
// the operation, and the system call and errno when one failed. Test codes with
// errors.Is(err, shmlink.CodePeerClosed) or CodeOf(err); messages may change.
//
// # Trust
//
// Endpoints from Pair, FromFd and Inherited trust their peer with writable regions;
// Connect and Listen accept only frozen regions unless AcceptWritable is set, and check
// the peer's credentials first (SameUser by default). Whatever the trust, every region
// that arrives is checked before it is mapped, in the order of docs/PROTOCOL.md §5.3:
// a regular file, sealable (a memfd), on shmem (not hugetlbfs), sealed against
// shrinking and growing, frozen exactly when write-sealed, of the stated size; then the
// trust policy and the limits (Limits, SetProcessLimits). A refused record closes every
// descriptor it carried, shuts the socket down and ends the connection.
//
// # Memory
//
// Region.Bytes is a slice over the mapping, valid while the *Region is reachable: Close
// replaces its contents with private zero pages at the same address (stale slices read
// zeros, writes go nowhere) and the range is unmapped when the Region is garbage
// collected. See Region.Bytes for the rules.
package shmlink

package main

import (
	"errors"
	"fmt"

	"github.com/shmlink/shmlink/peers/go/shmlink"
)

// runResponder plays SCENARIO.md "Role responder": record each MESSAGE, answer with the
// digests, stamp and return the transferred regions.
func runResponder(c connector, out string) error {
	ep, err := c.endpoint()
	if err != nil {
		return err
	}
	held := map[*shmlink.Region]bool{}
	defer func() {
		// Regions that arrived are closed once the connection is over (closing one
		// before would release it).
		ep.Close()
		for r := range held {
			r.Close()
		}
	}()
	var t transcript
	for n := 0; ; n++ {
		msg, err := ep.RecvTimeout(timeout)
		if errors.Is(err, shmlink.CodePeerClosed) {
			break
		}
		if err != nil {
			t.write(out)
			return fmt.Errorf("receiving message %d: %w", n, err)
		}
		for _, r := range msg.Regions {
			held[r] = true
		}
		sums, err := digests(msg)
		if err != nil {
			return err
		}
		if err := t.record(msg, sums); err != nil {
			return err
		}
		var ack []byte
		for _, s := range sums {
			ack = append(ack, s[:]...)
		}
		var back []*shmlink.Region
		for i, r := range msg.Regions {
			d := msg.Descriptors[i]
			if !d.Transferred {
				continue
			}
			if !d.Frozen {
				// Stamp the digest taken before this write (as much of it as fits).
				if err := r.Write(0, sums[1+i][:min(32, r.Size())]); err != nil {
					return fmt.Errorf("stamping region %d: %w", d.ID, err)
				}
			}
			back = append(back, r)
		}
		if err := ep.Send(ack, &shmlink.SendOptions{Transfer: back, Timeout: timeout}); err != nil {
			t.write(out)
			return fmt.Errorf("sending ack %d: %w", n, err)
		}
	}
	return t.write(out)
}

package main

import (
	"fmt"

	"shmlink.dev/peers/go/shmlink"
)

// runResponder plays SCENARIO.md "Role responder": record each MESSAGE,
// answer with the digests, stamp and return the transferred regions.
func runResponder(c connector, out string) error {
	ep, err := c.endpoint()
	if err != nil {
		return err
	}
	defer ep.Close()
	var (
		t    transcript
		msg  shmlink.Message
		sums [][32]byte
		ack  []byte
		back []shmlink.Attachment
	)
	for n := 0; ; n++ {
		if err := ep.RecvInto(&msg); err != nil {
			if shmlink.CodeOf(err) == shmlink.CodePeerClosed {
				break
			}
			t.write(out)
			return fmt.Errorf("receiving message %d: %w", n, err)
		}
		sums = digests(&msg, sums)
		if err := t.record(&msg, sums); err != nil {
			return err
		}
		ack = ack[:0]
		back = back[:0]
		for _, s := range sums {
			ack = append(ack, s[:]...)
		}
		for i, r := range msg.Regions {
			if !r.Transfer {
				continue
			}
			if !r.Frozen {
				// Stamp the digest taken before this write.
				copy(r.Region.Bytes(), sums[1+i][:])
			}
			back = append(back, shmlink.Attachment{Region: r.Region, Transfer: true})
		}
		if err := ep.Send(ack, back...); err != nil {
			t.write(out)
			return fmt.Errorf("sending ack %d: %w", n, err)
		}
		msg.Close()
	}
	return t.write(out)
}

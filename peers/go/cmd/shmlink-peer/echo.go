package main

import (
	"fmt"

	"shmlink.dev/peers/go/shmlink"
)

// sink keeps the page reads of runEcho from being optimised away.
var sink byte

// runEcho plays SCENARIO.md "Role echo": touch one byte per page of every
// region, send the same payload and regions back without TRANSFER. The
// message, the attachment slice and the endpoint's buffers are reused, so
// a steady stream of messages does not allocate.
func runEcho(c connector) error {
	ep, err := c.endpoint()
	if err != nil {
		return err
	}
	defer ep.Close()
	var (
		msg  shmlink.Message
		back []shmlink.Attachment
		acc  byte
	)
	for n := 0; ; n++ {
		if err := ep.RecvInto(&msg); err != nil {
			if shmlink.CodeOf(err) == shmlink.CodePeerClosed {
				sink = acc
				return nil
			}
			return fmt.Errorf("receiving message %d: %w", n, err)
		}
		back = back[:0]
		for _, r := range msg.Regions {
			b := r.Region.Bytes()
			for i := 0; i < len(b); i += page {
				acc += b[i]
			}
			back = append(back, shmlink.Attachment{Region: r.Region})
		}
		if err := ep.Send(msg.Payload, back...); err != nil {
			return fmt.Errorf("echoing message %d: %w", n, err)
		}
		msg.Close()
	}
}

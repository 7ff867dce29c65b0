package main

import (
	"errors"
	"fmt"

	"github.com/shmlink/shmlink/peers/go/shmlink"
)

// sink keeps the page reads of runEcho from being optimised away.
var sink byte

// runEcho plays SCENARIO.md "Role echo": touch one byte per page of every region, send
// the same payload and regions back without TRANSFER.
func runEcho(c connector) error {
	ep, err := c.endpoint()
	if err != nil {
		return err
	}
	defer ep.Close()
	var acc byte
	for n := 0; ; n++ {
		msg, err := ep.RecvTimeout(timeout)
		if errors.Is(err, shmlink.CodePeerClosed) {
			sink = acc
			return nil
		}
		if err != nil {
			return fmt.Errorf("receiving message %d: %w", n, err)
		}
		for _, r := range msg.Regions {
			b, err := r.Bytes()
			if err != nil {
				return err
			}
			for i := 0; i < len(b); i += page {
				acc += b[i]
			}
		}
		if err := ep.Send(msg.Payload, &shmlink.SendOptions{Regions: msg.Regions, Timeout: timeout}); err != nil {
			return fmt.Errorf("echoing message %d: %w", n, err)
		}
	}
}

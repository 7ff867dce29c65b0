// Command child is started by a Node parent with spawnWithEndpoint; it adds 1 to the
// first byte of each frame, in place, and hands the frame back.
package main

import (
	"log"

	"github.com/shmlink/shmlink/peers/go/shmlink"
)

func main() {
	parent, err := shmlink.Inherited(nil) // the socket SHMLINK_FD names
	if err != nil {
		log.Fatal(err)
	}
	defer parent.Close()
	for m, err := range parent.Messages() { // ends when the parent closes
		if err != nil {
			log.Fatal(err)
		}
		frame := m.Regions[0]
		mem, err := frame.Bytes() // zero copy: the parent's memory
		if err != nil {
			log.Fatal(err)
		}
		mem[0]++
		back := &shmlink.SendOptions{Transfer: []*shmlink.Region{frame}}
		if err := parent.Send([]byte("done"), back); err != nil {
			log.Fatal(err)
		}
	}
}

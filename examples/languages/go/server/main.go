// Command server answers each client with the text in the region it sent, in upper case.
//
//	server <socket-path>
package main

import (
	"bytes"
	"log"
	"os"

	"github.com/shmlink/shmlink/peers/go/shmlink"
)

func main() {
	server, err := shmlink.Listen(os.Args[1], nil) // clients of this user (or root) only
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	for {
		client, err := server.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(client)
	}
}

func serve(client *shmlink.Endpoint) {
	defer client.Close()
	for m, err := range client.Messages() { // frozen regions: clients are not trusted
		if err != nil {
			log.Print(err)
			return
		}
		text, err := m.Regions[0].Read(0, m.Regions[0].Size()) // a copy
		if err != nil {
			log.Print(err)
			return
		}
		if err := client.Send(bytes.ToUpper(text), nil); err != nil {
			log.Print(err)
			return
		}
	}
}

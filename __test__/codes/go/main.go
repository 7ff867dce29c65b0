// Command codes prints the Go library's error codes (shmlink.Codes), in its order, as a
// JSON array, for __test__/errors.spec.ts to compare with docs/ERRORS.md.
package main

import (
	"encoding/json"
	"os"

	"github.com/shmlink/shmlink/peers/go/shmlink"
)

func main() {
	if err := json.NewEncoder(os.Stdout).Encode(shmlink.Codes); err != nil {
		os.Exit(1)
	}
}

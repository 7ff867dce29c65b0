package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"

	"shmlink.dev/peers/go/shmlink"
)

// One line of a transcript (SCENARIO.md "Transcripts").
type transcriptRegion struct {
	ID          uint32 `json:"id"`
	Size        int    `json:"size"`
	New         bool   `json:"new"`
	Frozen      bool   `json:"frozen"`
	Transferred bool   `json:"transferred"`
	SHA256      string `json:"sha256"`
}

type transcriptEntry struct {
	N             int                `json:"n"`
	PayloadLen    int                `json:"payload_len"`
	PayloadSHA256 string             `json:"payload_sha256"`
	Regions       []transcriptRegion `json:"regions"`
}

// transcript accumulates lines in memory; they are small (one per message).
type transcript struct {
	lines [][]byte
}

// record appends msg, given its digests (payload first, then one per
// attached region, as computed by digests).
func (t *transcript) record(msg *shmlink.Message, sums [][32]byte) error {
	e := transcriptEntry{
		N:             len(t.lines),
		PayloadLen:    len(msg.Payload),
		PayloadSHA256: hex.EncodeToString(sums[0][:]),
		Regions:       make([]transcriptRegion, 0, len(msg.Regions)),
	}
	for i, r := range msg.Regions {
		e.Regions = append(e.Regions, transcriptRegion{
			ID:          r.ID,
			Size:        r.Region.Size(),
			New:         r.New,
			Frozen:      r.Frozen,
			Transferred: r.Transfer,
			SHA256:      hex.EncodeToString(sums[1+i][:]),
		})
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	t.lines = append(t.lines, b)
	return nil
}

func (t *transcript) write(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, l := range t.lines {
		w.Write(l)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing transcript: %w", err)
	}
	return nil
}

// digests returns the SHA-256 of msg's payload and of each attached
// region's full contents, in attachment order. A region attached twice is
// hashed once. sums is reused.
func digests(msg *shmlink.Message, sums [][32]byte) [][32]byte {
	sums = append(sums[:0], sha256.Sum256(msg.Payload))
	for i, r := range msg.Regions {
		var sum [32]byte
		done := false
		for j := 0; j < i; j++ {
			if msg.Regions[j].Region == r.Region {
				sum, done = sums[1+j], true
				break
			}
		}
		if !done {
			sum = sha256.Sum256(r.Region.Bytes())
		}
		sums = append(sums, sum)
	}
	return sums
}

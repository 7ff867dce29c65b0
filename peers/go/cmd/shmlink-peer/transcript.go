package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"

	"github.com/shmlink/shmlink/peers/go/shmlink"
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

// record appends msg, given its digests (payload first, then one per region).
func (t *transcript) record(msg *shmlink.Message, sums [][32]byte) error {
	e := transcriptEntry{
		N:             len(t.lines),
		PayloadLen:    len(msg.Payload),
		PayloadSHA256: hex.EncodeToString(sums[0][:]),
		Regions:       make([]transcriptRegion, 0, len(msg.Regions)),
	}
	for i, r := range msg.Regions {
		d := msg.Descriptors[i]
		e.Regions = append(e.Regions, transcriptRegion{
			ID:          d.ID,
			Size:        r.Size(),
			New:         d.New,
			Frozen:      d.Frozen,
			Transferred: d.Transferred,
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

// regionDigest is the SHA-256 of a region's full contents, hashed in place.
func regionDigest(r *shmlink.Region) ([32]byte, error) {
	b, err := r.Bytes()
	if err != nil {
		return [32]byte{}, err
	}
	return sha256.Sum256(b), nil
}

// digests returns the SHA-256 of msg's payload and of each attached region's contents,
// in attachment order. A region attached twice is hashed once.
func digests(msg *shmlink.Message) ([][32]byte, error) {
	sums := [][32]byte{sha256.Sum256(msg.Payload)}
	for i, r := range msg.Regions {
		var sum [32]byte
		done := false
		for j := 0; j < i; j++ {
			if msg.Regions[j] == r {
				sum, done = sums[1+j], true
				break
			}
		}
		if !done {
			var err error
			if sum, err = regionDigest(r); err != nil {
				return nil, err
			}
		}
		sums = append(sums, sum)
	}
	return sums, nil
}

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"os"

	"shmlink.dev/peers/go/shmlink"
)

type scenario struct {
	Version int    `json:"version"`
	Steps   []step `json:"steps"`
}

type step struct {
	Op      string `json:"op"`
	Name    string `json:"name"` // release
	Payload struct {
		Len  int    `json:"len"`
		Seed uint64 `json:"seed"`
	} `json:"payload"`
	Regions []stepRegion `json:"regions"`
}

type stepRegion struct {
	Name     string  `json:"name"`
	Size     int     `json:"size"`
	Seed     *uint64 `json:"seed"`
	Freeze   bool    `json:"freeze"`
	Transfer bool    `json:"transfer"`
}

// named is a region of the driver's table with what we know of its digest.
//
// Filling is separated from hashing so that the driver can hash while the
// responder works: a region filled in this step has the digest of
// pattern(seed, size), a pure function computed from the fill table after
// the message is sent, without touching the region (which TRANSFER forbids).
type named struct {
	r *shmlink.Region
	// digest is valid when known is set. It is dropped when the region goes
	// out with TRANSFER and is not frozen (the responder stamps it).
	digest [32]byte
	known  bool
	// filled is set between a fill and the hash of its pattern.
	filled bool
	seed   uint64
}

// hashBeforeSend makes sure the digest of a region not filled in this step
// is known, reading the region while we may still.
func (n *named) hashBeforeSend() {
	if !n.known && !n.filled {
		n.digest = sha256.Sum256(n.r.Bytes())
		n.known = true
	}
}

// hashAfterSend resolves a fill of this step from the pattern alone.
func (n *named) hashAfterSend(h hash.Hash) {
	if n.filled {
		n.digest = hashPattern(h, n.seed, n.r.Size())
		n.known, n.filled = true, false
	}
}

func loadScenario(path string) (*scenario, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s scenario
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if s.Version != 1 {
		return nil, fmt.Errorf("%s: unsupported scenario version %d", path, s.Version)
	}
	return &s, nil
}

// runDriver plays SCENARIO.md "Role driver".
func runDriver(c connector, scenarioPath, out string) (err error) {
	sc, err := loadScenario(scenarioPath)
	if err != nil {
		return err
	}
	ep, err := c.endpoint()
	if err != nil {
		return err
	}
	table := map[string]*named{}
	var t transcript
	defer func() {
		// The transcript is written even on failure, to help debugging.
		if werr := t.write(out); err == nil {
			err = werr
		}
	}()
	defer func() {
		ep.Close()
		for _, n := range table {
			n.r.Close()
		}
	}()

	var (
		h        = newHash()
		payload  = make([]byte, 0, shmlink.MaxPayloadLimit)
		atts     []shmlink.Attachment
		expected []byte
		sums     [][32]byte
		msg      shmlink.Message
	)
	for i, st := range sc.Steps {
		switch st.Op {
		case "send":
			atts = atts[:0]
			for _, sr := range st.Regions {
				n, err := prepare(table, sr)
				if err != nil {
					return fmt.Errorf("step %d: %w", i, err)
				}
				atts = append(atts, shmlink.Attachment{Region: n.r, Transfer: sr.Transfer})
			}
			// Digests of exactly what is sent, as of after every fill of
			// this step (a name may appear twice).
			for _, sr := range st.Regions {
				table[sr.Name].hashBeforeSend()
			}
			if st.Payload.Len < 0 || st.Payload.Len > cap(payload) {
				return fmt.Errorf("step %d: payload of %d bytes is outside 0..%d", i, st.Payload.Len, cap(payload))
			}
			payload = payload[:st.Payload.Len]
			fill(payload, st.Payload.Seed)
			ps := sha256.Sum256(payload)
			if err := ep.Send(payload, atts...); err != nil {
				return fmt.Errorf("step %d: send: %w", i, err)
			}
			expected = append(expected[:0], ps[:]...)
			for _, sr := range st.Regions {
				n := table[sr.Name]
				n.hashAfterSend(h)
				expected = append(expected, n.digest[:]...)
			}
			for _, sr := range st.Regions {
				if n := table[sr.Name]; sr.Transfer && !n.r.Frozen() {
					n.known = false
				}
			}
			if err := ep.RecvInto(&msg); err != nil {
				return fmt.Errorf("step %d: receiving the ack: %w", i, err)
			}
			sums = digests(&msg, sums)
			if err := t.record(&msg, sums); err != nil {
				return err
			}
			if err := checkAck(&msg, st, table, expected); err != nil {
				msg.Close()
				return fmt.Errorf("step %d: %w", i, err)
			}
			msg.Close()
		case "release":
			n, ok := table[st.Name]
			if !ok {
				return fmt.Errorf("step %d: release of unknown region %q", i, st.Name)
			}
			if err := ep.Release(n.r); err != nil {
				return fmt.Errorf("step %d: release %q: %w", i, st.Name, err)
			}
			delete(table, st.Name)
			n.r.Close()
		default:
			return fmt.Errorf("step %d: unknown op %q", i, st.Op)
		}
	}
	return nil
}

// prepare creates, fills and freezes the region of one step entry.
func prepare(table map[string]*named, sr stepRegion) (*named, error) {
	n, ok := table[sr.Name]
	if !ok {
		r, err := shmlink.NewRegion(sr.Size)
		if err != nil {
			return nil, fmt.Errorf("creating %q: %w", sr.Name, err)
		}
		n = &named{r: r}
		table[sr.Name] = n
	} else if n.r.Size() != sr.Size {
		return nil, fmt.Errorf("region %q has %d bytes, step says %d", sr.Name, n.r.Size(), sr.Size)
	}
	if sr.Seed != nil {
		if n.r.Frozen() {
			return nil, fmt.Errorf("region %q is frozen and cannot be filled", sr.Name)
		}
		fill(n.r.Bytes(), *sr.Seed)
		n.filled, n.seed, n.known = true, *sr.Seed, false
	}
	// "freeze": false on a region frozen earlier leaves it frozen: seals
	// cannot be removed.
	if sr.Freeze && !n.r.Frozen() {
		if err := n.r.Freeze(); err != nil {
			return nil, fmt.Errorf("freezing %q: %w", sr.Name, err)
		}
	}
	return n, nil
}

// checkAck verifies the responder's answer to one send step.
func checkAck(msg *shmlink.Message, st step, table map[string]*named, expected []byte) error {
	if !bytes.Equal(msg.Payload, expected) {
		return errors.New("the ack's digests differ from what was sent")
	}
	k := 0
	for _, sr := range st.Regions {
		if !sr.Transfer {
			continue
		}
		if k >= len(msg.Regions) {
			return fmt.Errorf("the ack carries %d regions, %q was transferred and is missing", len(msg.Regions), sr.Name)
		}
		got := msg.Regions[k]
		own := table[sr.Name].r
		// The endpoint resolves a returning file to the object we hold by
		// (st_dev, st_ino); compare both for a clear message.
		if got.Region != own || got.Region.FileID() != own.FileID() {
			return fmt.Errorf("ack region %d is not our region %q", k, sr.Name)
		}
		if !got.Transfer {
			return fmt.Errorf("ack region %d (%q) is not sent with TRANSFER", k, sr.Name)
		}
		k++
	}
	if k != len(msg.Regions) {
		return fmt.Errorf("the ack carries %d regions, %d were transferred", len(msg.Regions), k)
	}
	return nil
}

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/shmlink/shmlink/peers/go/shmlink"
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
func runDriver(c connector, scenarioPath, out string) error {
	sc, err := loadScenario(scenarioPath)
	if err != nil {
		return err
	}
	ep, err := c.endpoint()
	if err != nil {
		return err
	}
	named := map[string]*shmlink.Region{}
	var t transcript
	defer func() {
		// The connection ends first, so that closing the regions sends no RELEASE.
		ep.Close()
		for _, r := range named {
			r.Close()
		}
	}()
	for i, st := range sc.Steps {
		var err error
		switch st.Op {
		case "send":
			err = driverSend(ep, st, named, &t)
		case "release":
			r, ok := named[st.Name]
			if !ok {
				err = fmt.Errorf("release of unknown region %q", st.Name)
				break
			}
			// Closing a region releases it on every connection it was sent on.
			r.Close()
			delete(named, st.Name)
		default:
			err = fmt.Errorf("unknown op %q", st.Op)
		}
		if err != nil {
			t.write(out)
			return fmt.Errorf("step %d: %w", i, err)
		}
	}
	return t.write(out)
}

func driverSend(ep *shmlink.Endpoint, st step, named map[string]*shmlink.Region, t *transcript) error {
	var regions, transfer []*shmlink.Region
	for _, sr := range st.Regions {
		r, ok := named[sr.Name]
		if !ok {
			var err error
			if r, err = shmlink.NewRegion(sr.Size); err != nil {
				return fmt.Errorf("creating %q: %w", sr.Name, err)
			}
			named[sr.Name] = r
		} else if r.Size() != sr.Size {
			return fmt.Errorf("region %q has %d bytes, the step says %d", sr.Name, r.Size(), sr.Size)
		}
		if sr.Seed != nil {
			b, err := r.Bytes()
			if err != nil {
				return fmt.Errorf("filling %q: %w", sr.Name, err)
			}
			fill(b, *sr.Seed)
		}
		if sr.Freeze {
			if err := r.Freeze(); err != nil {
				return fmt.Errorf("freezing %q: %w", sr.Name, err)
			}
		}
		regions = append(regions, r)
		if sr.Transfer {
			transfer = append(transfer, r)
		}
	}
	if st.Payload.Len < 0 || st.Payload.Len > shmlink.MaxPayloadCeiling {
		return fmt.Errorf("payload of %d bytes is outside 0..%d", st.Payload.Len, shmlink.MaxPayloadCeiling)
	}
	payload := make([]byte, st.Payload.Len)
	fill(payload, st.Payload.Seed)
	// The responder must echo the digests of exactly what was sent, in the step's order;
	// hash now, while the transferred regions are still ours to read.
	expected := sha256.Sum256(payload)
	want := append([]byte(nil), expected[:]...)
	for _, r := range regions {
		sum, err := regionDigest(r)
		if err != nil {
			return err
		}
		want = append(want, sum[:]...)
	}
	if err := ep.Send(payload, &shmlink.SendOptions{Regions: regions, Transfer: transfer, Timeout: timeout}); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	ack, err := ep.RecvTimeout(timeout)
	if err != nil {
		return fmt.Errorf("receiving the ack: %w", err)
	}
	sums, err := digests(ack)
	if err != nil {
		return err
	}
	if err := t.record(ack, sums); err != nil {
		return err
	}
	if !bytes.Equal(ack.Payload, want) {
		return errors.New("the responder's digests differ from what was sent")
	}
	// The ack brings the transferred regions back, in order: the library resolves a file
	// this process has (same st_dev and st_ino) to the *Region that was sent.
	if len(ack.Regions) != len(transfer) {
		return fmt.Errorf("the ack carries %d regions, %d were transferred", len(ack.Regions), len(transfer))
	}
	for i, r := range ack.Regions {
		if r != transfer[i] {
			return fmt.Errorf("ack region %d is not the region that was transferred", i)
		}
		if !ack.Descriptors[i].Transferred {
			return fmt.Errorf("ack region %d came back without TRANSFER", i)
		}
		if r.Transferred() {
			return fmt.Errorf("ack region %d is still marked transferred", i)
		}
	}
	return nil
}

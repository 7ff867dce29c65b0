package main

import (
	"crypto/sha256"
	"hash"
)

// The fill pattern of SCENARIO.md: byte k of pattern(seed, len) is
//
//	(seed*131 + (k%4096)*7 + (k/4096)*13) mod 256.
//
// Page p of a pattern is therefore the 4096-byte run (c + 7j) mod 256,
// j = 0..4095, with c = (seed*131 + p*13) mod 256. Since 7*183 ≡ 1
// (mod 256), that run equals seq[t : t+4096] where seq[i] = 7i mod 256 and
// t = 183c mod 256. One 4352-byte table thus holds all 256 possible pages,
// stays in L1, and filling is a sequence of 4 KiB copies.
const page = 4096

var seq = func() []byte {
	b := make([]byte, page+256)
	for i := range b {
		b[i] = byte(7 * i)
	}
	return b
}()

// pageOf returns page p of pattern(seed, ...), aliasing seq.
func pageOf(seed uint64, p int) []byte {
	c := (seed*131 + uint64(p)*13) & 255
	t := (c * 183) & 255
	return seq[t : t+page]
}

// fill writes pattern(seed, len(dst)) into dst.
func fill(dst []byte, seed uint64) {
	for p, off := 0, 0; off < len(dst); p, off = p+1, off+page {
		copy(dst[off:], pageOf(seed, p))
	}
}

// hashPattern returns the SHA-256 of pattern(seed, n), hashing straight
// from the cache-resident table.
func hashPattern(h hash.Hash, seed uint64, n int) [32]byte {
	h.Reset()
	for p, off := 0, 0; off < n; p, off = p+1, off+page {
		h.Write(pageOf(seed, p)[:min(page, n-off)])
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

func newHash() hash.Hash { return sha256.New() }

package shmlink

import "strconv"

func itoa(i int) string    { return strconv.Itoa(i) }
func utoa(u uint64) string { return strconv.FormatUint(u, 10) }
func otoa(m uint32) string { return strconv.FormatUint(uint64(m), 8) }

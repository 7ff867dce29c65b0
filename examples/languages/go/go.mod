module github.com/shmlink/shmlink/examples/languages/go

go 1.24.0

require github.com/shmlink/shmlink/peers/go v0.0.0

require golang.org/x/sys v0.38.0 // indirect

// The library in this checkout. A program of yours needs no replace directive:
// go get github.com/shmlink/shmlink/peers/go/shmlink
replace github.com/shmlink/shmlink/peers/go => ../../../peers/go

module github.com/shmlink/shmlink/__test__/codes/go

go 1.24.0

require github.com/shmlink/shmlink/peers/go v0.0.0

require golang.org/x/sys v0.38.0 // indirect

// The library in this checkout, not a published version.
replace github.com/shmlink/shmlink/peers/go => ../../../peers/go

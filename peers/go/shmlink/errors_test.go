package shmlink

import (
	"errors"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// TestCodesMatchErrorsMd compares Codes with the table of docs/ERRORS.md, row by row.
func TestCodesMatchErrorsMd(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/ERRORS.md")
	if err != nil {
		t.Skip("docs/ERRORS.md is not here (not a checkout of the repository):", err)
	}
	var table []Code
	for _, m := range regexp.MustCompile("(?m)^\\| `(ERR_SHMLINK_[A-Z_]+)` \\|").FindAllStringSubmatch(string(doc), -1) {
		table = append(table, Code(m[1]))
	}
	if len(table) != len(Codes) {
		t.Fatalf("docs/ERRORS.md has %d codes, Codes has %d", len(table), len(Codes))
	}
	for i := range table {
		if table[i] != Codes[i] {
			t.Errorf("row %d: docs/ERRORS.md says %s, Codes says %s", i, table[i], Codes[i])
		}
	}
}

func TestErrorsAreMatchedByCodeAndCause(t *testing.T) {
	err := error(osError("Endpoint.Send", "sendmsg", syscall.EMFILE, "close unused regions"))
	if !errors.Is(err, CodeOS) || errors.Is(err, CodeClosed) {
		t.Fatal("errors.Is does not match the code")
	}
	if !errors.Is(err, syscall.EMFILE) {
		t.Fatal("errors.Is does not reach the errno")
	}
	var se *Error
	if !errors.As(err, &se) || se.Syscall != "sendmsg" || se.Errno != syscall.EMFILE || se.Op != "Endpoint.Send" {
		t.Fatalf("errors.As: %+v", se)
	}
	text := err.Error()
	if !strings.HasPrefix(text, "Endpoint.Send: sendmsg failed: EMFILE (") || !strings.HasSuffix(text, "; close unused regions") {
		t.Fatalf("message %q", text)
	}
	if CodeOf(err) != CodeOS || CodeOf(errors.New("x")) != "" {
		t.Fatal("CodeOf")
	}
	wrapped := errors.Join(errors.New("context"), err)
	if CodeOf(wrapped) != CodeOS || !errors.Is(wrapped, CodeOS) {
		t.Fatal("a wrapped error keeps its code")
	}
}

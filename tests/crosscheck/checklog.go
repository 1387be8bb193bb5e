// checklog verifies Tollgate's audit artefacts with Go's own golang.org/x/mod/sumdb/note and
// sumdb/tlog, an implementation independent of Tollgate's: a signed checkpoint note, an inclusion
// proof and a consistency proof. It reads one JSON object on standard input and exits 0 only if
// every part verifies.
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type input struct {
	Vkey      string `json:"vkey"`
	Note      string `json:"note"`
	Inclusion *struct {
		Record string   `json:"record"`
		Index  int64    `json:"index"`
		Size   int64    `json:"size"`
		Root   string   `json:"root"`
		Proof  []string `json:"proof"`
	} `json:"inclusion"`
	Consistency *struct {
		Old     int64    `json:"old"`
		New     int64    `json:"new"`
		OldRoot string   `json:"old_root"`
		NewRoot string   `json:"new_root"`
		Proof   []string `json:"proof"`
	} `json:"consistency"`
}

func hash(text string) tlog.Hash {
	raw, err := base64.StdEncoding.DecodeString(text)
	if err != nil || len(raw) != tlog.HashSize {
		fail("not a base64 SHA-256 hash: %q", text)
	}
	var h tlog.Hash
	copy(h[:], raw)
	return h
}

func hashes(texts []string) []tlog.Hash {
	out := make([]tlog.Hash, len(texts))
	for i, text := range texts {
		out[i] = hash(text)
	}
	return out
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
	os.Exit(1)
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		fail("input: %v", err)
	}
	verifier, err := note.NewVerifier(in.Vkey)
	if err != nil {
		fail("verifier key: %v", err)
	}
	if in.Note != "" {
		if _, err := note.Open([]byte(in.Note), note.VerifierList(verifier)); err != nil {
			fail("note: %v", err)
		}
	}
	if p := in.Inclusion; p != nil {
		leaf := tlog.RecordHash([]byte(p.Record))
		if err := tlog.CheckRecord(hashes(p.Proof), p.Size, hash(p.Root), p.Index, leaf); err != nil {
			fail("inclusion: %v", err)
		}
	}
	if p := in.Consistency; p != nil {
		if err := tlog.CheckTree(hashes(p.Proof), p.New, hash(p.NewRoot), p.Old, hash(p.OldRoot)); err != nil {
			fail("consistency: %v", err)
		}
	}
	fmt.Println("ok")
}

// Command testsummary turns `go test -json` on stdin into a CI log that is
// short but shows what ran: one line per top-level test and per package, the
// full output of every failure, and a closing "N passed, N failed, N skipped"
// line. It exits 1 when anything failed.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	counts := flag.String("counts", "", "also write \"passed failed skipped\" to this file")
	flag.Parse()
	s := newSummary(os.Stdout)
	if err := s.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testsummary:", err)
		os.Exit(2)
	}
	s.finish()
	if *counts != "" {
		data := fmt.Sprintf("%d %d %d\n", s.passed, s.failed, s.skipped)
		if err := os.WriteFile(*counts, []byte(data), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "testsummary:", err)
			os.Exit(2)
		}
	}
	if s.failed > 0 {
		os.Exit(1)
	}
}

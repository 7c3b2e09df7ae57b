package main

import (
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strings"
)

var (
	// A test log line: "    file.go:123: message".
	logLine = regexp.MustCompile(`^\s+(\S+\.go:\d+): (.*)$`)
	// Complement's request log: "[CSAPI] GET hs1/path => 404 Not Found (1ms)".
	requestLine = regexp.MustCompile(`^\[(CSAPI|FED)\] .* => (\d{3})`)
	ansi        = regexp.MustCompile("\x1b\\[[0-9;]*m")
)

// failuresMain prints, for each failed test that has no failed subtest, the last request that
// did not succeed and the test's last log message (usually the fatal one): a quick way to group
// failures by missing feature. Usage: results failures LOG.jsonl...
func failuresMain(paths []string, w io.Writer) error {
	type testLog struct {
		failed     bool
		lastBad    string // last non-2xx request
		message    string // last log message: a fatal failure ends the test
		hasFailSub bool
	}
	tests := map[string]*testLog{}
	get := func(name string) *testLog {
		if tests[name] == nil {
			tests[name] = &testLog{}
		}
		return tests[name]
	}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		err = readEvents(f, func(ev event) {
			if ev.Test == "" {
				return
			}
			name := qualify(ev.Package, ev.Test)
			t := get(name)
			switch ev.Action {
			case "fail":
				t.failed = true
				for parent := name; strings.Contains(parent, "/"); {
					parent = parent[:strings.LastIndexByte(parent, '/')]
					get(parent).hasFailSub = true
				}
			case "output":
				m := logLine.FindStringSubmatch(ansi.ReplaceAllString(strings.TrimRight(ev.Output, "\n"), ""))
				if m == nil {
					return
				}
				if r := requestLine.FindStringSubmatch(m[2]); r != nil {
					if r[2][0] != '2' {
						t.lastBad = m[2]
					}
					return
				}
				// Skip informational lines: SkipIf warnings, the mock federation server's own log.
				if strings.HasPrefix(m[2], "WARNING: ") || strings.HasPrefix(m[1], "server.go:") {
					return
				}
				t.message = m[1] + ": " + m[2]
			}
		})
		f.Close()
		if err != nil {
			return err
		}
	}
	names := make([]string, 0, len(tests))
	for name, t := range tests {
		if t.failed && !t.hasFailSub {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		t := tests[name]
		fmt.Fprintf(w, "%s\n", name)
		if t.lastBad != "" {
			fmt.Fprintf(w, "    last failed request: %s\n", t.lastBad)
		}
		if t.message != "" {
			msg := t.message
			if len(msg) > 400 {
				msg = msg[:400] + "..."
			}
			fmt.Fprintf(w, "    %s\n", msg)
		}
	}
	return nil
}

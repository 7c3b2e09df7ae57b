// Command results turns `go test -json` output of a Complement run into the results file
// (sorted {"Action","Test"} lines), compares it with the committed baseline and reports regressions.
//
//	results progress < go-test.jsonl            # compact live view of a run (stdin -> stdout)
//	results check -baseline FILE -out FILE -mode replace|merge|ci [-selected FILE] LOG.jsonl...
//	results report -src COMPLEMENT_SOURCE_DIR RESULTS.jsonl   # markdown tables for docs/compliance.md
//	results failures LOG.jsonl...                # first failure message of each failed test
//
// Test names: tests of the packages tests and tests/csapi keep their Go names ("TestSync/parallel/x");
// tests of other packages are prefixed with the package's last path element ("msc4222.TestSync"), since
// Go test names are only unique within a package.
//
// check exits 1 when a test that passes in the baseline does not pass in this run (a regression):
// failed, skipped, or absent although its top-level test was selected (-selected lists the selected
// top-level names; without it, only tests that reported a result are compared).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

const modulePrefix = "github.com/matrix-org/complement/"

// event is one line of `go test -json` (test2json) output.
type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// result is one line of the results file.
type result struct {
	Action string `json:"Action"`
	Test   string `json:"Test"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "progress":
		if err := progress(os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "results:", err)
			os.Exit(2)
		}
	case "check":
		os.Exit(checkMain(os.Args[2:], os.Stdout))
	case "failures":
		if err := failuresMain(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "results:", err)
			os.Exit(2)
		}
	case "report":
		if err := reportMain(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "results:", err)
			os.Exit(2)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: results progress < log.jsonl\n       results check -baseline FILE -out FILE -mode replace|merge|ci [-selected FILE] LOG.jsonl...\n       results report -src DIR RESULTS.jsonl\n       results failures LOG.jsonl...")
	os.Exit(2)
}

// qualify gives the results-file name of test `test` in package `pkg`.
func qualify(pkg, test string) string {
	rel := strings.TrimPrefix(pkg, modulePrefix)
	if rel == "tests" || rel == "tests/csapi" || test == "" {
		return test
	}
	return rel[strings.LastIndex(rel, "/")+1:] + "." + test
}

// topLevel is the top-level test of a (qualified) test name.
func topLevel(name string) string {
	if i := strings.IndexByte(name, '/'); i >= 0 {
		return name[:i]
	}
	return name
}

func isResult(action string) bool {
	return action == "pass" || action == "fail" || action == "skip"
}

// readEvents calls fn for each event of a go test -json stream; non-JSON lines are ignored.
func readEvents(r io.Reader, fn func(event)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	for sc.Scan() {
		var ev event
		if json.Unmarshal(sc.Bytes(), &ev) == nil && ev.Action != "" {
			fn(ev)
		}
	}
	return sc.Err()
}

// progress prints a compact live view: one line per finished top-level test (with failed subtests),
// package summaries, and package-level output such as build errors or panics.
func progress(r io.Reader, w io.Writer) error {
	var failedSubtests = map[string][]string{}
	return readEvents(r, func(ev event) {
		switch {
		case ev.Test == "" && ev.Action == "output":
			line := strings.TrimRight(ev.Output, "\n")
			// go test's own PASS/FAIL markers are summarised by the package result below.
			if line != "PASS" && line != "FAIL" && !strings.HasPrefix(line, "ok  \t") && !strings.HasPrefix(line, "FAIL\t") {
				fmt.Fprintln(w, line)
			}
		case ev.Test == "" && isResult(ev.Action):
			fmt.Fprintf(w, "== %s %s (%.0fs)\n", strings.ToUpper(ev.Action), strings.TrimPrefix(ev.Package, modulePrefix), ev.Elapsed)
		case ev.Test != "" && isResult(ev.Action):
			name := qualify(ev.Package, ev.Test)
			top := topLevel(name)
			if top != name {
				if ev.Action == "fail" {
					failedSubtests[top] = append(failedSubtests[top], name)
				}
				return
			}
			fmt.Fprintf(w, "%-4s %s (%.1fs)\n", strings.ToUpper(ev.Action), name, ev.Elapsed)
			for _, sub := range failedSubtests[top] {
				fmt.Fprintf(w, "       fail %s\n", sub)
			}
			delete(failedSubtests, top)
		}
	})
}

// runResults reads go test -json logs into test name -> final action.
func runResults(paths []string) (map[string]string, error) {
	out := map[string]string{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return nil, err
		}
		err = readEvents(f, func(ev event) {
			if ev.Test != "" && isResult(ev.Action) {
				out[qualify(ev.Package, ev.Test)] = ev.Action
			}
		})
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	return out, nil
}

// readResults reads a results file; a missing file is an empty baseline.
func readResults(path string) (map[string]string, error) {
	out := map[string]string{}
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return out, nil
	} else if err != nil {
		return nil, err
	}
	for i, line := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil || r.Test == "" || !isResult(r.Action) {
			return nil, fmt.Errorf("%s:%d: not a result line: %q", path, i+1, line)
		}
		out[r.Test] = r.Action
	}
	return out, nil
}

// writeResults writes sorted result lines (by test name, as the Rust homeservers' files are).
func writeResults(path string, results map[string]string) error {
	names := make([]string, 0, len(results))
	for name := range results {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		line, _ := json.Marshal(result{Action: results[name], Test: name})
		b.Write(line)
		b.WriteByte('\n')
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func readLines(path string) (map[string]bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			out[line] = true
		}
	}
	return out, nil
}

// comparison is what a run means for the baseline.
type comparison struct {
	regressions map[string]string // name -> action now ("" if it did not run)
	newPasses   []string
	merged      map[string]string // the results file to write
}

// compare applies a run to the baseline. selected (may be nil) holds the selected top-level tests;
// flaky (may be nil) the tests that are not gated (a name covers its subtests).
func compare(baseline, run map[string]string, selected, flaky map[string]bool, mode string) comparison {
	c := comparison{regressions: map[string]string{}, merged: map[string]string{}}
	isFlaky := func(name string) bool {
		for n := name; ; n = n[:strings.LastIndexByte(n, '/')] {
			if flaky[n] {
				return true
			}
			if !strings.Contains(n, "/") {
				return false
			}
		}
	}
	expected := func(name string) bool {
		if selected != nil {
			return selected[topLevel(name)]
		}
		_, ok := run[name]
		return ok
	}
	for name, was := range baseline {
		if was == "pass" && expected(name) && run[name] != "pass" && !isFlaky(name) {
			c.regressions[name] = run[name]
		}
	}
	for name, now := range run {
		if now == "pass" && baseline[name] != "pass" {
			c.newPasses = append(c.newPasses, name)
		}
	}
	sort.Strings(c.newPasses)

	switch mode {
	case "replace":
		for name, now := range run {
			c.merged[name] = now
		}
	case "merge", "ci":
		// Per test name: entries of tests that did not run stay as they are (a test removed upstream
		// goes away on the next full, replace-mode run).
		for name, was := range baseline {
			c.merged[name] = was
		}
		for name, now := range run {
			// ci never records a regression in the baseline: a failing CI run must not make the
			// next one pass. A deliberate replace/merge run records it. Nor does ci record the
			// ups and downs of flaky tests.
			if _, regressed := c.regressions[name]; mode == "ci" && (regressed || isFlaky(name)) {
				continue
			}
			c.merged[name] = now
		}
	}
	return c
}

func count(results map[string]string) (pass, fail, skip int) {
	for _, a := range results {
		switch a {
		case "pass":
			pass++
		case "fail":
			fail++
		case "skip":
			skip++
		}
	}
	return
}

func checkMain(args []string, w io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ExitOnError)
	baselinePath := fs.String("baseline", "", "committed results file to compare with")
	outPath := fs.String("out", "", "results file to write (may be the baseline)")
	mode := fs.String("mode", "merge", "replace: out = this run; merge: baseline updated with this run; ci: like merge but regressions are not recorded")
	selectedPath := fs.String("selected", "", "file with the selected top-level test names, one per line")
	flakyPath := fs.String("flaky", "", "file with the names of flaky tests (not gated), one per line; # comments")
	_ = fs.Parse(args)
	if *baselinePath == "" || *outPath == "" || fs.NArg() == 0 || (*mode != "replace" && *mode != "merge" && *mode != "ci") {
		fs.Usage()
		return 2
	}
	baseline, err := readResults(*baselinePath)
	if err != nil {
		fmt.Fprintln(w, "results:", err)
		return 2
	}
	run, err := runResults(fs.Args())
	if err != nil {
		fmt.Fprintln(w, "results:", err)
		return 2
	}
	var selected map[string]bool
	if *selectedPath != "" {
		if selected, err = readLines(*selectedPath); err != nil {
			fmt.Fprintln(w, "results:", err)
			return 2
		}
	}
	var flaky map[string]bool
	if *flakyPath != "" {
		if flaky, err = readLines(*flakyPath); err != nil {
			fmt.Fprintln(w, "results:", err)
			return 2
		}
	}
	c := compare(baseline, run, selected, flaky, *mode)
	if err := writeResults(*outPath, c.merged); err != nil {
		fmt.Fprintln(w, "results:", err)
		return 2
	}

	var failed []string
	for name, action := range run {
		if action == "fail" {
			failed = append(failed, name)
		}
	}
	sort.Strings(failed)
	fmt.Fprintf(w, "Failed in this run (%d):\n", len(failed))
	for _, name := range failed {
		note := ""
		if baseline[name] == "" {
			note = " (new test)"
		}
		fmt.Fprintf(w, "  %s%s\n", name, note)
	}
	if len(c.newPasses) > 0 {
		fmt.Fprintf(w, "Passing now, not in the baseline (%d), recorded in %s:\n", len(c.newPasses), *outPath)
		for _, name := range c.newPasses {
			fmt.Fprintf(w, "  %s\n", name)
		}
	}
	names := make([]string, 0, len(c.regressions))
	for name := range c.regressions {
		names = append(names, name)
	}
	sort.Strings(names)
	if len(names) > 0 {
		fmt.Fprintf(w, "REGRESSIONS: %d test(s) that pass in the baseline did not pass:\n", len(names))
		for _, name := range names {
			now := c.regressions[name]
			if now == "" {
				now = "did not run"
			}
			fmt.Fprintf(w, "  %s: %s\n", name, now)
		}
	} else {
		fmt.Fprintln(w, "No regressions against the baseline.")
	}
	pass, fail, skip := count(run)
	if *mode == "ci" {
		// The gate's verdict closes the output: a failure already in the baseline is a known gap,
		// not a CI failure, so it is counted with the skips; regressions are the failures (a
		// regressed test that did not run at all counts as failed too).
		fmt.Fprintf(w, "this run: %d passed, %d failed, %d skipped\n", pass, fail, skip)
		known := 0
		for name, action := range run {
			if _, regressed := c.regressions[name]; action == "fail" && !regressed {
				known++
			}
		}
		fmt.Fprintf(w, "(gate: %d known failures from the baseline are counted as skipped, regressions as failed)\n", known)
		fmt.Fprintf(w, "complement-ci: %d passed, %d failed, %d skipped\n", pass, len(names), skip+known)
	} else {
		fmt.Fprintf(w, "complement: %d passed, %d failed, %d skipped\n", pass, fail, skip)
	}
	if len(names) > 0 {
		return 1
	}
	return 0
}

package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestQualify(t *testing.T) {
	for _, c := range []struct{ pkg, test, want string }{
		{modulePrefix + "tests", "TestRemotePresence", "TestRemotePresence"},
		{modulePrefix + "tests/csapi", "TestSync/parallel/x", "TestSync/parallel/x"},
		{modulePrefix + "tests/msc4222", "TestSync", "msc4222.TestSync"},
		{modulePrefix + "tests/msc4222", "TestSync/a/b", "msc4222.TestSync/a/b"},
	} {
		if got := qualify(c.pkg, c.test); got != c.want {
			t.Errorf("qualify(%q, %q) = %q, want %q", c.pkg, c.test, got, c.want)
		}
	}
	if got := topLevel("msc4222.TestSync/a/b"); got != "msc4222.TestSync" {
		t.Errorf("topLevel = %q", got)
	}
}

func TestCompare(t *testing.T) {
	baseline := map[string]string{
		"TestA": "pass", "TestA/x": "pass", "TestA/y": "fail",
		"TestB": "pass",
		"TestC": "fail",
		"TestD": "pass", // not selected
	}
	run := map[string]string{
		"TestA": "fail", "TestA/x": "fail", "TestA/y": "pass",
		// TestB selected but did not run (e.g. the package crashed)
		"TestC": "pass",
		"TestE": "fail", // new test
	}
	selected := map[string]bool{"TestA": true, "TestB": true, "TestC": true, "TestE": true}

	c := compare(baseline, run, selected, nil, "ci")
	wantReg := map[string]string{"TestA": "fail", "TestA/x": "fail", "TestB": ""}
	if !reflect.DeepEqual(c.regressions, wantReg) {
		t.Errorf("regressions = %v, want %v", c.regressions, wantReg)
	}
	if want := []string{"TestA/y", "TestC"}; !reflect.DeepEqual(c.newPasses, want) {
		t.Errorf("newPasses = %v, want %v", c.newPasses, want)
	}
	// ci: improvements and new tests recorded, regressions not.
	wantCI := map[string]string{
		"TestA": "pass", "TestA/x": "pass", "TestA/y": "pass", "TestB": "pass", "TestC": "pass",
		"TestD": "pass", "TestE": "fail",
	}
	if !reflect.DeepEqual(c.merged, wantCI) {
		t.Errorf("ci merged = %v, want %v", c.merged, wantCI)
	}
	// merge: everything that ran is recorded.
	m := compare(baseline, run, selected, nil, "merge").merged
	if m["TestA"] != "fail" || m["TestD"] != "pass" || m["TestB"] != "pass" {
		t.Errorf("merge merged = %v", m)
	}
	// replace: only this run.
	if r := compare(baseline, run, selected, nil, "replace").merged; !reflect.DeepEqual(r, run) {
		t.Errorf("replace merged = %v", r)
	}
	// Without a selection only tests that reported are compared.
	if c := compare(baseline, run, nil, nil, "merge"); len(c.regressions) != 2 {
		t.Errorf("unselected regressions = %v", c.regressions)
	}
}

func TestFlakyTestsAreNotGated(t *testing.T) {
	baseline := map[string]string{"TestF": "pass", "TestF/a": "pass", "TestG": "fail"}
	run := map[string]string{"TestF": "fail", "TestF/a": "fail", "TestG": "pass"}
	flaky := map[string]bool{"TestF": true}
	c := compare(baseline, run, nil, flaky, "ci")
	if len(c.regressions) != 0 {
		t.Errorf("regressions = %v", c.regressions)
	}
	want := map[string]string{"TestF": "pass", "TestF/a": "pass", "TestG": "pass"}
	if !reflect.DeepEqual(c.merged, want) {
		t.Errorf("merged = %v, want %v", c.merged, want)
	}
}

func TestCheckEndToEnd(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "log.jsonl")
	baseline := filepath.Join(dir, "results.jsonl")
	os.WriteFile(baseline, []byte(`{"Action":"pass","Test":"TestA"}`+"\n"+`{"Action":"fail","Test":"msc4222.TestSync"}`+"\n"), 0o644)
	os.WriteFile(log, []byte(strings.Join([]string{
		`{"Action":"run","Package":"github.com/matrix-org/complement/tests","Test":"TestA"}`,
		`not json at all`,
		`{"Action":"pass","Package":"github.com/matrix-org/complement/tests","Test":"TestA","Elapsed":1}`,
		`{"Action":"pass","Package":"github.com/matrix-org/complement/tests/msc4222","Test":"TestSync","Elapsed":1}`,
		`{"Action":"skip","Package":"github.com/matrix-org/complement/tests","Test":"TestZ","Elapsed":0}`,
		`{"Action":"fail","Package":"github.com/matrix-org/complement/tests","Elapsed":3}`,
	}, "\n")+"\n"), 0o644)
	var out strings.Builder
	if code := checkMain([]string{"-baseline", baseline, "-out", baseline, "-mode", "ci", log}, &out); code != 0 {
		t.Fatalf("exit %d:\n%s", code, out.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if last := lines[len(lines)-1]; last != "complement-ci: 2 passed, 0 failed, 1 skipped" {
		t.Errorf("closing line %q", last)
	}
	got, _ := os.ReadFile(baseline)
	want := `{"Action":"pass","Test":"TestA"}` + "\n" + `{"Action":"skip","Test":"TestZ"}` + "\n" + `{"Action":"pass","Test":"msc4222.TestSync"}` + "\n"
	if string(got) != want {
		t.Errorf("results file:\n%s\nwant:\n%s", got, want)
	}
	// A regression exits 1 and is not written to the baseline in ci mode.
	os.WriteFile(log, []byte(`{"Action":"fail","Package":"github.com/matrix-org/complement/tests","Test":"TestA"}`+"\n"), 0o644)
	out.Reset()
	if code := checkMain([]string{"-baseline", baseline, "-out", baseline, "-mode", "ci", log}, &out); code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, out.String())
	}
	if got2, _ := os.ReadFile(baseline); string(got2) != want {
		t.Errorf("ci run recorded a regression:\n%s", got2)
	}
	if !strings.HasSuffix(out.String(), "complement-ci: 0 passed, 1 failed, 0 skipped\n") {
		t.Errorf("gate line:\n%s", out.String())
	}
	// A failure that is already in the baseline counts as skipped on the gate line.
	os.WriteFile(log, []byte(`{"Action":"fail","Package":"github.com/matrix-org/complement/tests","Test":"TestNew"}`+"\n"), 0o644)
	os.WriteFile(baseline, []byte(`{"Action":"fail","Test":"TestNew"}`+"\n"), 0o644)
	out.Reset()
	if code := checkMain([]string{"-baseline", baseline, "-out", baseline, "-mode", "ci", log}, &out); code != 0 {
		t.Fatalf("exit %d, want 0:\n%s", code, out.String())
	}
	if !strings.HasSuffix(out.String(), "complement-ci: 0 passed, 0 failed, 1 skipped\n") {
		t.Errorf("gate line:\n%s", out.String())
	}
}

func TestProgress(t *testing.T) {
	in := strings.Join([]string{
		`{"Action":"output","Package":"github.com/matrix-org/complement/tests","Output":"building...\n"}`,
		`{"Action":"fail","Package":"github.com/matrix-org/complement/tests","Test":"TestA/sub","Elapsed":1}`,
		`{"Action":"fail","Package":"github.com/matrix-org/complement/tests","Test":"TestA","Elapsed":2}`,
		`{"Action":"output","Package":"github.com/matrix-org/complement/tests","Output":"FAIL\n"}`,
		`{"Action":"fail","Package":"github.com/matrix-org/complement/tests","Elapsed":3}`,
	}, "\n")
	var out strings.Builder
	if err := progress(strings.NewReader(in), &out); err != nil {
		t.Fatal(err)
	}
	want := "building...\nFAIL TestA (2.0s)\n       fail TestA/sub\n== FAIL tests (3s)\n"
	if out.String() != want {
		t.Errorf("progress output:\n%q\nwant\n%q", out.String(), want)
	}
}

package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
)

// testFunc matches a top-level Go test function.
var testFunc = regexp.MustCompile(`(?m)^func (Test\w+)\(t \*testing\.T\)`)

// location is where a top-level test is defined.
type location struct {
	pkg  string // "csapi", "tests" (federation package), "msc4222", ...
	file string // base name
}

// scanTests maps qualified top-level test names to their package and file in a Complement tree.
func scanTests(src string) (map[string]location, error) {
	out := map[string]location{}
	err := filepath.WalkDir(filepath.Join(src, "tests"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, filepath.Dir(path))
		pkg := filepath.Base(rel)
		for _, m := range testFunc.FindAllStringSubmatch(string(data), -1) {
			out[qualify(modulePrefix+filepath.ToSlash(rel), m[1])] = location{pkg: pkg, file: filepath.Base(path)}
		}
		return nil
	})
	return out, err
}

// areas: the first rule whose pattern occurs in the test's file name (or, for the catch-alls, its
// package) decides. Order matters.
var areas = []struct {
	name string
	re   *regexp.Regexp
}{
	{"presence", regexp.MustCompile("presence")},
	{"federation (tests/federation_*)", regexp.MustCompile("^federation_")},
	{"E2EE, devices, to-device", regexp.MustCompile("key|e2e|device|to_device")},
	{"media", regexp.MustCompile("media|url_preview")},
	{"sync", regexp.MustCompile("sync")},
	{"registration, login, accounts, profiles", regexp.MustCompile("register|login|logout|account|admin|profile|user_directory|ignored_users|push")},
	{"server basics (versions, capabilities, errors, encoding)", regexp.MustCompile("version|capabilities|unknown_endpoints|invalid|request_encoding|content")},
	{"rooms (create, membership, state, messages, ...)", regexp.MustCompile("room|member|join|invite|ban|kick|knock|restricted|redact|power|alias|txnid|search|thread|relation|direct_messaging|v12|hierarchy|summary|history|receipt|typing|leave|forget|upgrade|event_auth|acl|unreject|missing_events")},
}

func areaOf(loc location) string {
	if strings.HasPrefix(loc.pkg, "msc") {
		return "MSCs (tests/msc*)"
	}
	for _, a := range areas {
		if a.re.MatchString(loc.file) {
			return a.name
		}
	}
	return "other"
}

type tally struct{ pass, fail, skip int }

func (t *tally) add(action string) {
	switch action {
	case "pass":
		t.pass++
	case "fail":
		t.fail++
	case "skip":
		t.skip++
	}
}

func reportMain(args []string, w io.Writer) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	src := fs.String("src", "", "Complement source tree (complement/.work/complement-src)")
	_ = fs.Parse(args)
	if *src == "" || fs.NArg() != 1 {
		return fmt.Errorf("usage: results report -src DIR RESULTS.jsonl")
	}
	results, err := readResults(fs.Arg(0))
	if err != nil {
		return err
	}
	locs, err := scanTests(*src)
	if err != nil {
		return err
	}
	byPkg := map[string]*tally{}
	byArea := map[string]*tally{}
	topByArea := map[string]*tally{}
	var all, top tally
	for name, action := range results {
		loc, ok := locs[topLevel(name)]
		if !ok {
			loc = location{pkg: "?", file: "?"}
		}
		pkgName := "tests/" + loc.pkg
		if loc.pkg == "tests" {
			pkgName = "tests (federation etc.)"
		}
		if byPkg[pkgName] == nil {
			byPkg[pkgName] = &tally{}
		}
		byPkg[pkgName].add(action)
		area := areaOf(loc)
		if byArea[area] == nil {
			byArea[area], topByArea[area] = &tally{}, &tally{}
		}
		byArea[area].add(action)
		all.add(action)
		if name == topLevel(name) {
			topByArea[area].add(action)
			top.add(action)
		}
	}
	table := func(title string, rows map[string]*tally, tops map[string]*tally) {
		fmt.Fprintf(w, "| %s | pass | fail | skip |", title)
		if tops != nil {
			fmt.Fprint(w, " top-level pass/fail/skip |")
		}
		fmt.Fprintln(w)
		fmt.Fprint(w, "|---|---:|---:|---:|")
		if tops != nil {
			fmt.Fprint(w, "---:|")
		}
		fmt.Fprintln(w)
		keys := make([]string, 0, len(rows))
		for k := range rows {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			t := rows[k]
			fmt.Fprintf(w, "| %s | %d | %d | %d |", k, t.pass, t.fail, t.skip)
			if tops != nil {
				tt := tops[k]
				fmt.Fprintf(w, " %d / %d / %d |", tt.pass, tt.fail, tt.skip)
			}
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "| **all** | **%d** | **%d** | **%d** |", all.pass, all.fail, all.skip)
		if tops != nil {
			fmt.Fprintf(w, " **%d / %d / %d** |", top.pass, top.fail, top.skip)
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w)
	}
	table("package", byPkg, nil)
	table("area", byArea, topByArea)
	return nil
}

// Package complement pins the Complement test suite (github.com/matrix-org/complement) as a Go module
// dependency so that `go test github.com/matrix-org/complement/tests/...` resolves from this module.
// The blank imports below are the third-party packages that Complement's test packages import, so that
// `go mod tidy` keeps their go.sum entries (tidy does not follow tests of dependencies). See run.sh.
package complement

import (
	_ "github.com/gorilla/mux"
	_ "github.com/matrix-org/complement"
	_ "github.com/matrix-org/gomatrix"
	_ "github.com/matrix-org/gomatrixserverlib"
	_ "github.com/matrix-org/gomatrixserverlib/fclient"
	_ "github.com/matrix-org/gomatrixserverlib/spec"
	_ "github.com/matrix-org/util"
	_ "github.com/tidwall/gjson"
	_ "github.com/tidwall/sjson"
	_ "golang.org/x/exp/slices"
)

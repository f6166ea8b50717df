//go:build tools

// Package tools pins versitygw, the S3-compatible server of the object-storage tests and of
// `make up S3=1` (issue 24): scripts/bootstrap.sh builds
// `github.com/versity/versitygw/cmd/versitygw` at the version in go.mod, once per machine.
package tools

import _ "github.com/versity/versitygw/cmd/versitygw"

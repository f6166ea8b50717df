//go:build tools

// Package tools pins datarhei Core, the peer of the recording density benchmark (variant
// "datarhei" of bench/recording_density.py). The benchmark builds the main package
// `github.com/datarhei/core/v16` at the version in go.mod on demand, once per machine, and caches
// the binary like scripts/bootstrap.sh caches its Go builds. Neither `make install` nor
// `make test` builds it.
package tools

import _ "github.com/datarhei/core/v16"

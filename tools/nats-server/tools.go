//go:build tools

// Package tools pins the official nats-server (docs/ARCHITECTURE.md §7): scripts/bootstrap.sh
// builds `github.com/nats-io/nats-server/v2` at the version in go.mod, once per machine.
package tools

import _ "github.com/nats-io/nats-server/v2"

// Package runbooks runs docs/runbooks.md: every ```sh block whose first line
// is "# runbook NAME, host HOST" is run as written (bash -euo pipefail) on
// that host of a demo consortium of real processes (`memberd demo init`,
// `memberd relay`, `memberd run`, SoftHSM2 tokens), runbook after runbook.
//
// The consortium test has the build tag runbooks (`make runbooks`, about
// two minutes); the doc's syntax is checked by `make test`.
package runbooks

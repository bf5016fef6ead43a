package runbooks

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

// block is one fenced ```sh block of docs/runbooks.md that belongs to a
// runbook: its first line is "# runbook NAME, host HOST".
type block struct {
	runbook, host string
	line          int // line of the opening fence in the doc
	script        string
}

var markerRe = regexp.MustCompile(`^# runbook ([a-z0-9-]+), host ([a-z0-9$-]+)\s*$`)

// parseRunbooks returns the runbook blocks of the doc in order. A ```sh block
// without the marker is prose (an example, not run).
func parseRunbooks(doc string) ([]block, error) {
	var out []block
	sc := bufio.NewScanner(strings.NewReader(doc))
	n := 0
	in := false
	var cur *block
	var body []string
	for sc.Scan() {
		n++
		l := sc.Text()
		if !in {
			if strings.TrimSpace(l) == "```sh" {
				in = true
				cur = &block{line: n}
				body = nil
			}
			continue
		}
		if strings.TrimSpace(l) == "```" {
			in = false
			if len(body) > 0 {
				if m := markerRe.FindStringSubmatch(body[0]); m != nil {
					cur.runbook, cur.host = m[1], m[2]
					cur.script = strings.Join(body, "\n") + "\n"
					out = append(out, *cur)
				} else if strings.HasPrefix(body[0], "# runbook") {
					return nil, fmt.Errorf("docs/runbooks.md:%d: malformed marker %q (want \"# runbook NAME, host HOST\")", cur.line+1, body[0])
				}
			}
			continue
		}
		body = append(body, l)
	}
	if in {
		return nil, fmt.Errorf("docs/runbooks.md:%d: unterminated code block", cur.line)
	}
	return out, sc.Err()
}

func TestParseRunbooks(t *testing.T) {
	doc := "x\n```sh\n# runbook a, host member-a\necho 1\n```\n```sh\necho prose\n```\n```sh\n# runbook b, host relay-1\necho 2\n```\n"
	bs, err := parseRunbooks(doc)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 2 || bs[0].runbook != "a" || bs[0].host != "member-a" || bs[1].host != "relay-1" || !strings.Contains(bs[1].script, "echo 2") {
		t.Fatalf("parsed %+v", bs)
	}
	if _, err := parseRunbooks("```sh\n# runbook Bad name\n```\n"); err == nil {
		t.Fatal("malformed marker accepted")
	}
}

// The doc's runbooks, in the order the test runs them on one consortium.
var order = []string{"install", "status-hsm", "status-relay", "rotate-key", "replace-relay", "onboard", "recover", "offboard"}

func TestDocListsEveryRunbook(t *testing.T) {
	bs := docBlocks(t)
	seen := map[string]bool{}
	for _, b := range bs {
		seen[b.runbook] = true
	}
	for _, r := range order {
		if !seen[r] {
			t.Errorf("docs/runbooks.md has no block of runbook %q", r)
		}
	}
	for r := range seen {
		found := false
		for _, o := range order {
			found = found || o == r
		}
		if !found {
			t.Errorf("docs/runbooks.md has runbook %q that the test does not run", r)
		}
	}
}

func docBlocks(t *testing.T) []block {
	t.Helper()
	raw, err := os.ReadFile("../../docs/runbooks.md")
	if err != nil {
		t.Fatal(err)
	}
	bs, err := parseRunbooks(string(raw))
	if err != nil {
		t.Fatal(err)
	}
	return bs
}

// TestDocChecksStop: under bash -e, a failing "! cmd", or a failing command
// before "&&", does not stop the script (bash ignores errexit there), so such
// a check counts only as the block's last command, whose status is the
// block's. Elsewhere it must be written as separate commands.
func TestDocChecksStop(t *testing.T) {
	quoted := regexp.MustCompile(`'[^']*'`)
	for _, b := range docBlocks(t) {
		lines := strings.Split(strings.TrimRight(b.script, "\n"), "\n")
		for i, l := range lines {
			if i == len(lines)-1 {
				continue
			}
			bare := quoted.ReplaceAllString(l, "''")
			if strings.HasPrefix(strings.TrimSpace(l), "! ") || strings.Contains(bare, "&&") {
				t.Errorf("docs/runbooks.md:%d: %q: bash -e would not stop when this check fails (only the last line of a block may negate or use &&)", b.line+1+i, l)
			}
		}
	}
}

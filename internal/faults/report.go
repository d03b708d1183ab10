package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/cachemachine/cachemachine/internal/lab"
)

// check is one row of the table: a scenario, what it expects, and what was observed. Its
// result is computed: PASS only when the scenario ran and every expectation held. Scenario
// goroutines call its methods; printing happens after they ended.
type check struct {
	scenario    string
	expectation string

	mu       sync.Mutex // guards the fields below
	ran      bool
	figures  []string
	failures []string
}

func newCheck(scenario, expectation string) *check {
	return &check{scenario: scenario, expectation: expectation}
}

// start marks the row as run: a row its group never reached fails with the group's error.
func (c *check) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ran = true
}

// figure adds a measured figure.
func (c *check) figure(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.figures = append(c.figures, fmt.Sprintf(format, args...))
}

// expect records a failure, described by format and args, unless ok; it returns ok.
func (c *check) expect(ok bool, format string, args ...any) bool {
	if !ok {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.failures = append(c.failures, fmt.Sprintf(format, args...))
	}
	return ok
}

// fail records an error that kept the scenario from observing what it expects.
func (c *check) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ran = true
	c.failures = append(c.failures, err.Error())
}

// result is PASS or FAIL.
func (c *check) result() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ran && len(c.failures) == 0 {
		return "PASS"
	}
	return "FAIL"
}

// cells are the row's table cells; a failed row's figure names its first failure, the notes
// under the table list them all.
func (c *check) cells() []string {
	res := c.result()
	c.mu.Lock()
	defer c.mu.Unlock()
	fig := strings.Join(c.figures, "; ")
	if !c.ran && len(c.failures) == 0 {
		fig = "did not run"
	}
	return []string{c.scenario, c.expectation, res, fig}
}

// printTable prints the header line, the one markdown table and the failures.
func printTable(w io.Writer, header string, rows []*check, took time.Duration) {
	fmt.Fprintf(w, "\n%s; took %s\n\n", header, took.Round(time.Second))
	table := [][]string{{"scenario", "expectation", "result", "figure"}}
	for _, r := range rows {
		table = append(table, r.cells())
	}
	lab.PrintTable(w, table)
	var notes []string
	for _, r := range rows {
		r.mu.Lock()
		for _, f := range r.failures {
			notes = append(notes, fmt.Sprintf("- %s: %s", r.scenario, f))
		}
		r.mu.Unlock()
	}
	if len(notes) > 0 {
		fmt.Fprintln(w, "\nfailures:")
		for _, n := range notes {
			fmt.Fprintln(w, n)
		}
	}
}

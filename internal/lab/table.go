package lab

import (
	"fmt"
	"io"
	"strings"
)

// PrintTable prints rows as a markdown table, rows[0] being the header, each column padded
// to its widest cell: how the benchmarks and make faults print their results.
func PrintTable(w io.Writer, rows [][]string) {
	if len(rows) == 0 {
		return
	}
	widths := make([]int, len(rows[0]))
	for i := range widths {
		widths[i] = 3 // a separator needs three dashes
	}
	for _, cells := range rows {
		for i, c := range cells {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	line := func(cells []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range cells {
			fmt.Fprintf(&b, " %s%s |", c, strings.Repeat(" ", widths[i]-len([]rune(c))))
		}
		fmt.Fprintln(w, b.String())
	}
	line(rows[0])
	sep := make([]string, len(widths))
	for i, n := range widths {
		sep[i] = strings.Repeat("-", n)
	}
	line(sep)
	for _, cells := range rows[1:] {
		line(cells)
	}
}

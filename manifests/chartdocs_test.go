package manifests

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	yamlv3 "gopkg.in/yaml.v3"
)

var update = flag.Bool("update", false, "rewrite the chart README's values table from values.yaml")

const (
	valuesHeader = "## Values\n"
	valuesFooter = "\n----------------------------------------------\n"
)

// TestChartREADME: the chart README's values table is what helm-docs would make of
// values.yaml (`# --` comments, `# @default --` overrides, alphabetical keys), so every value
// is documented where Phalanx's operators look. -update rewrites it.
func TestChartREADME(t *testing.T) {
	t.Parallel()
	values, err := os.ReadFile(chartDir + "/values.yaml")
	require.NoError(t, err)
	table, undocumented := valuesTable(t, values)
	assert.Empty(t, undocumented, "values without a `# --` description")

	path := chartDir + "/README.md"
	readme, err := os.ReadFile(path)
	require.NoError(t, err)
	start := bytes.Index(readme, []byte(valuesHeader))
	require.GreaterOrEqual(t, start, 0, "README has no %q", strings.TrimSpace(valuesHeader))
	start += len(valuesHeader)
	end := bytes.Index(readme[start:], []byte(valuesFooter))
	require.GreaterOrEqual(t, end, 0, "README has no footer line after the values table")
	end += start
	want := "\n" + table
	if *update {
		out := append(append(slices.Clip(readme[:start]), want...), readme[end:]...)
		require.NoError(t, os.WriteFile(path, out, 0o644))
		return
	}
	assert.Equal(t, want, string(readme[start:end]), "README values table is stale: go test ./manifests -run TestChartREADME -update")
}

// valueRow is one line of the table.
type valueRow struct{ key, typ, def, desc string }

// valuesTable renders helm-docs' table of a values file, and lists the keys without a
// description.
func valuesTable(t *testing.T, values []byte) (string, []string) {
	t.Helper()
	var doc yamlv3.Node
	require.NoError(t, yamlv3.Unmarshal(values, &doc))
	require.Equal(t, yamlv3.DocumentNode, doc.Kind)
	var rows []valueRow
	var undocumented []string
	var walk func(n *yamlv3.Node, prefix string)
	walk = func(n *yamlv3.Node, prefix string) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			key := prefix + k.Value
			desc, def, documented := parseDocComment(k.HeadComment)
			if !documented && v.Kind == yamlv3.MappingNode && len(v.Content) > 0 {
				walk(v, key+".")
				continue
			}
			if !documented {
				undocumented = append(undocumented, key)
			}
			if def == "" {
				def = "`" + compactJSON(t, v) + "`"
			}
			rows = append(rows, valueRow{key: key, typ: typeOf(v), def: def, desc: desc})
		}
	}
	walk(doc.Content[0], "")
	slices.SortFunc(rows, func(a, b valueRow) int { return strings.Compare(a.key, b.key) })
	var b strings.Builder
	b.WriteString("| Key | Type | Default | Description |\n|-----|------|---------|-------------|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", r.key, r.typ, strings.ReplaceAll(r.def, "|", `\|`), strings.ReplaceAll(r.desc, "|", `\|`))
	}
	return b.String(), undocumented
}

// parseDocComment reads helm-docs' comment: "# -- description" (continued by the following
// comment lines) and "# @default -- text".
func parseDocComment(c string) (desc, def string, ok bool) {
	var parts []string
	inDesc := false
	for _, line := range strings.Split(c, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "#"))
		switch {
		case strings.HasPrefix(line, "-- "):
			inDesc, ok = true, true
			parts = []string{strings.TrimPrefix(line, "-- ")}
		case strings.HasPrefix(line, "@default -- "):
			def = strings.TrimPrefix(line, "@default -- ")
			inDesc = false
		case inDesc && line != "":
			parts = append(parts, line)
		}
	}
	return strings.Join(parts, " "), def, ok
}

func typeOf(n *yamlv3.Node) string {
	switch n.Kind {
	case yamlv3.MappingNode:
		return "object"
	case yamlv3.SequenceNode:
		return "list"
	}
	switch n.Tag {
	case "!!int":
		return "int"
	case "!!bool":
		return "bool"
	case "!!float":
		return "float"
	}
	return "string"
}

func compactJSON(t *testing.T, n *yamlv3.Node) string {
	t.Helper()
	var v any
	require.NoError(t, n.Decode(&v))
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	require.NoError(t, enc.Encode(v))
	return strings.TrimSpace(b.String())
}

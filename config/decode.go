package config

import (
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// maxNodes bounds the YAML nodes one decode visits, so that aliases cannot expand a small
// file into an enormous configuration.
const maxNodes = 100_000

// Load reads the file at path and decodes it like Parse, naming the file by path in errors.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, data)
}

// WriteFile writes c to path (mode 0600) as YAML that Load reads back to the same
// configuration. With Default and DefaultRepoman it is how tests, the demo and the
// benchmarks make agent configuration files: from values, never from text templates.
func (c *Config) WriteFile(path string) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("write config %s: %w", path, err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write config: %w", err)
	}
	return nil
}

// Parse decodes data (YAML or JSON) over Default. name is the file name used in error
// messages. It reports every syntax error, type mismatch, unknown field, unknown repoman
// type and field that does not belong to its repoman type at once, as a *ValidationError.
// It does not run Validate: see the package documentation.
func Parse(name string, data []byte) (cfg *Config, err error) {
	var root yaml.Node
	if err := safeUnmarshal(data, &root); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		return nil, &ValidationError{File: name, Problems: []Problem{{Message: "invalid YAML: " + msg}}}
	}
	c := Default()
	c.file = name
	c.lines = map[string]int{}
	d := &decoder{lines: c.lines, budget: maxNodes}
	doc := &root
	if doc.Kind == yaml.DocumentNode {
		if len(doc.Content) == 0 {
			return &c, nil
		}
		doc = doc.Content[0]
	}
	if doc.Kind != 0 && !isNull(doc) {
		d.value("", doc, reflect.ValueOf(&c).Elem())
	}
	if len(d.problems) > 0 {
		return nil, &ValidationError{File: name, Problems: d.problems}
	}
	return &c, nil
}

// safeUnmarshal turns a panic of the YAML parser into an error: a configuration file must
// never crash the process with a stack trace instead of a message.
func safeUnmarshal(data []byte, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: %v", r)
		}
	}()
	return yaml.Unmarshal(data, n)
}

// decoder walks a yaml.Node tree against a Go value, collecting problems instead of stopping
// at the first.
type decoder struct {
	problems []Problem
	lines    map[string]int
	budget   int // nodes left to visit; see maxNodes
}

func (d *decoder) addf(path string, n *yaml.Node, format string, args ...any) {
	p := Problem{Field: path, Message: fmt.Sprintf(format, args...)}
	if n != nil {
		p.Line = n.Line
	}
	d.problems = append(d.problems, p)
}

// spend takes one node from the budget; it reports false, and a problem the first time,
// when the budget is exhausted.
func (d *decoder) spend(path string, n *yaml.Node) bool {
	if d.budget <= 0 {
		return false
	}
	d.budget--
	if d.budget == 0 {
		d.addf(path, n, "document too large or too much aliasing (over %d nodes)", maxNodes)
		return false
	}
	return true
}

var (
	durationType = reflect.TypeFor[Duration]()
	repomanType  = reflect.TypeFor[Repoman]()
)

// value decodes n into v. Null sets the zero value, as yaml.v3 does, except that lists and
// maps become empty, a null section keeps its defaults and a null repoman is an error.
func (d *decoder) value(path string, n *yaml.Node, v reflect.Value) {
	if m := deref(n); m != nil {
		n = m
	} else {
		d.addf(path, n, "invalid alias")
		return
	}
	if !d.spend(path, n) {
		return
	}
	if path != "" {
		d.lines[path] = n.Line
	}
	if isNull(n) {
		switch {
		case v.Type() == repomanType:
			d.addf(path, n, "must be a mapping, got null")
		case v.Kind() == reflect.Struct:
			// An empty section (agent: with every setting commented out) keeps its defaults.
		default:
			setEmpty(v)
		}
		return
	}
	t := v.Type()
	switch {
	case t == durationType:
		s, ok := d.scalar(path, n, "a duration")
		if !ok {
			return
		}
		var dur Duration
		if err := dur.UnmarshalText([]byte(s)); err != nil {
			d.addf(path, n, "%v", err)
			return
		}
		v.Set(reflect.ValueOf(dur))
	case t == repomanType:
		d.repoman(path, n, v)
	case t.Kind() == reflect.Pointer:
		e := reflect.New(t.Elem())
		d.value(path, n, e.Elem())
		v.Set(e)
	case t.Kind() == reflect.String:
		if s, ok := d.scalar(path, n, "a string"); ok {
			v.SetString(s)
		}
	case t.Kind() == reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			d.addf(path, n, "must be true or false, got %s", describe(n))
			return
		}
		var b bool
		if err := n.Decode(&b); err != nil {
			d.addf(path, n, "must be true or false, got %s", describe(n))
			return
		}
		v.SetBool(b)
	case t.Kind() == reflect.Int:
		var i int
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
			d.addf(path, n, "must be an integer, got %s", describe(n))
			return
		}
		v.SetInt(int64(i))
	case t.Kind() == reflect.Float64:
		var f float64
		if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!float") ||
			n.Decode(&f) != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.addf(path, n, "must be a number, got %s", describe(n))
			return
		}
		v.SetFloat(f)
	case t.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.addf(path, n, "must be a list, got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(t, len(n.Content), len(n.Content))
		for i, e := range n.Content {
			d.value(fmt.Sprintf("%s[%d]", path, i), e, s.Index(i))
		}
		v.Set(s)
	case t.Kind() == reflect.Map && t.Key().Kind() == reflect.String:
		if n.Kind != yaml.MappingNode {
			d.addf(path, n, "must be a mapping, got %s", describe(n))
			return
		}
		m := reflect.MakeMapWithSize(t, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, ok := d.key(path, n.Content[i])
			if !ok {
				continue
			}
			kp := join(path, k)
			if m.MapIndex(reflect.ValueOf(k)).IsValid() {
				d.addf(kp, n.Content[i], "duplicate key")
				continue
			}
			e := reflect.New(t.Elem()).Elem()
			d.value(kp, n.Content[i+1], e)
			m.SetMapIndex(reflect.ValueOf(k), e)
		}
		v.Set(m)
	case t.Kind() == reflect.Struct:
		d.structure(path, n, v, "")
	default:
		// Only reachable if the schema gains a type this decoder does not know.
		panic(fmt.Sprintf("config: cannot decode into %s", t))
	}
}

// structure decodes a mapping into the struct v. When typ is not "", fields whose `types`
// tag does not list typ are rejected (repomen). Merge keys (<<: *anchor) are honoured, and
// the mapping's own keys win over merged ones, as in YAML 1.1.
func (d *decoder) structure(path string, n *yaml.Node, v reflect.Value, typ string) {
	if n.Kind != yaml.MappingNode {
		d.addf(path, n, "must be a mapping, got %s", describe(n))
		return
	}
	for _, m := range merged(n) {
		if !d.spend(path, m) {
			return
		}
		if m.Kind != yaml.MappingNode {
			d.addf(path, m, "merge (<<) must be a mapping, got %s", describe(m))
			continue
		}
		d.structure(path, m, v, typ)
	}
	fields := fieldsOf(v.Type())
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		if isMergeKey(kn) {
			continue
		}
		k, ok := d.key(path, kn)
		if !ok {
			continue
		}
		kp := join(path, k)
		if line, dup := seen[k]; dup {
			d.addf(kp, kn, "duplicate field (first at line %d)", line)
			continue
		}
		seen[k] = kn.Line
		f, ok := fields[k]
		switch {
		case !ok:
			if s := suggest(k, fields); s != "" {
				d.addf(kp, kn, "unknown field (did you mean %s?)", s)
			} else {
				d.addf(kp, kn, "unknown field")
			}
		case v.Type() == repomanType && k == "type":
			// Decoded by repoman, before the other fields.
		case typ != "" && !slices.Contains(f.types, typ):
			d.addf(kp, kn, "not a field of %s", typ)
		default:
			d.value(kp, vn, v.Field(f.index))
		}
	}
}

// repoman decodes one repomen entry: its type first, because the type decides the defaults
// and which fields are allowed.
func (d *decoder) repoman(path string, n *yaml.Node, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		d.addf(path, n, "must be a mapping, got %s", describe(n))
		return
	}
	tp := join(path, "type")
	typ, known := "", false
	visits := 1000
	switch tn := lookup(n, "type", &visits); {
	case tn == nil:
		d.addf(tp, n, "required (want %s)", typeList)
	case tn.Kind != yaml.ScalarNode || isNull(tn):
		d.addf(tp, tn, "must be a string, got %s (want %s)", describe(tn), typeList)
	default:
		d.lines[tp] = tn.Line
		typ = tn.Value
		switch typ {
		case TypeRubinRepoGar, TypeRubinRepoMan, TypeSimpleRepoMan:
			known = true
		default:
			d.addf(tp, tn, "unknown repoman type %q (want %s)", typ, typeList)
		}
	}
	r := DefaultRepoman(typ)
	rv := reflect.ValueOf(&r).Elem()
	if known {
		d.structure(path, n, rv, typ)
	} else {
		// Still report unknown fields and bad values, but not which type owns a field.
		d.structure(path, n, rv, "")
	}
	v.Set(rv)
}

// lookup returns the value of key in the mapping n, following merge keys; nil if absent.
// visits bounds the mappings it looks at, against merge chains built to explode.
func lookup(n *yaml.Node, key string, visits *int) *yaml.Node {
	n = deref(n)
	if *visits <= 0 || n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	*visits--
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := deref(n.Content[i]); k != nil && k.Kind == yaml.ScalarNode && !isMergeKey(k) && k.Value == key {
			return deref(n.Content[i+1])
		}
	}
	ms := merged(n)
	for i := len(ms) - 1; i >= 0; i-- {
		if v := lookup(ms[i], key, visits); v != nil {
			return v
		}
	}
	return nil
}

// merged returns the mappings merged into n with merge keys, in application order: later
// ones win over earlier ones.
func merged(n *yaml.Node) []*yaml.Node {
	var out []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if !isMergeKey(n.Content[i]) {
			continue
		}
		v := deref(n.Content[i+1])
		if v != nil && v.Kind == yaml.SequenceNode {
			// <<: [*a, *b]: earlier entries win, so apply them last.
			for j := len(v.Content) - 1; j >= 0; j-- {
				if e := deref(v.Content[j]); e != nil {
					out = append(out, e)
				}
			}
			continue
		}
		if v != nil {
			out = append(out, v)
		}
	}
	return out
}

func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge"
}

// deref follows aliases; nil for a broken chain.
func deref(n *yaml.Node) *yaml.Node {
	for hops := 0; n != nil && n.Kind == yaml.AliasNode; hops++ {
		if hops > 100 {
			return nil
		}
		n = n.Alias
	}
	return n
}

const typeList = "RubinRepoGar, RubinRepoMan or SimpleRepoMan"

// key returns a mapping key as a string; keys must be non-null scalars.
func (d *decoder) key(path string, kn *yaml.Node) (string, bool) {
	if m := deref(kn); m != nil {
		kn = m
	}
	if kn.Kind != yaml.ScalarNode || isNull(kn) {
		d.addf(path, kn, "keys must be strings, got %s", describe(kn))
		return "", false
	}
	return kn.Value, true
}

// scalar returns the text of a scalar node; any scalar is accepted where a string is
// wanted, as yaml.v3 does (name: 123 is the string "123").
func (d *decoder) scalar(path string, n *yaml.Node, want string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		d.addf(path, n, "must be %s, got %s", want, describe(n))
		return "", false
	}
	return n.Value, true
}

// setEmpty sets v to its zero value, except that slices and maps become empty rather than
// nil: every list and map of a parsed Config is non-nil.
func setEmpty(v reflect.Value) {
	switch v.Kind() {
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 0, 0))
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
	default:
		v.SetZero()
	}
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "must be X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		v := n.Value
		if len(v) > 64 {
			v = v[:64] + "..."
		}
		return strconv.Quote(v)
	default:
		return "an unexpected node"
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

type fieldInfo struct {
	index int
	types []string // from the `types` tag; nil means every type
}

// fieldsOf maps the yaml names of t's fields to their index; fields tagged "-" or
// unexported are not part of the file.
func fieldsOf(t reflect.Type) map[string]fieldInfo {
	m := map[string]fieldInfo{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || name == "" {
			continue
		}
		var types []string
		if s := f.Tag.Get("types"); s != "" {
			types = strings.Split(s, ",")
		}
		m[name] = fieldInfo{index: i, types: types}
	}
	return m
}

// suggest returns the known field closest to k when it is a plausible typo: at most two
// edits away, one more per eight characters of k.
func suggest(k string, fields map[string]fieldInfo) string {
	best, bestDist := "", 3+len(k)/8
	for name := range fields {
		dist := editDistance(k, name)
		if dist < bestDist || (dist == bestDist && best != "" && name < best) {
			best, bestDist = name, dist
		}
	}
	if bestDist >= len(k) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return math.MaxInt
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

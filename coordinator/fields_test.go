package coordinator

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/image"
)

// notOnWire lists the fields of the in-memory types that stay on the node on purpose, keyed
// "package.Type.Field", with the reason. Every other exported field of agent.State,
// agent.Desired and the types they hold (agent.CachedImage, Disk, Pulling, Held, Failed,
// image.Image, and any type added to them) must survive stateToWire/desiredToWire, the wire
// and back. A new field fails TestWireCarriesEveryField until messages.go encodes and decodes
// it and convert.go converts it, or it is listed here. (Whether the field is shown is
// leader's TestEveryStateFieldIsShown.)
var notOnWire = map[string]string{
	// containerd's image ID is the config digest, a node-local name: nodes and the leader
	// match images by manifest digest (CachedImage.Digests), never by ID.
	"agent.CachedImage.ID": "node-local image ID",
	// Where the agent measured its disk (image filesystem or state dir) only means something
	// on the node; debug node shows it there.
	"agent.Disk.Path": "node-local path",
}

// fieldSamples are the values of fields whose strings have a format the wire checks
// (references, digests); any other string gets a free text naming its field, every number a
// distinct non-zero value, every bool true, every time a distinct instant, every slice and
// map one element.
var fieldSamples = map[string]any{
	"agent.CachedImage.ID":      digest("config"),
	"agent.CachedImage.Tags":    "docker.io/cm/inventory:tag",
	"agent.CachedImage.Digests": "docker.io/cm/inventory@" + digest("inventory"),
	"agent.State.Cached":        [2]string{"docker.io/cm/cached:tag", digest("cached")},
	"agent.State.Missing":       "docker.io/cm/missing:tag",
	"agent.State.Queued":        "docker.io/cm/queued:tag",
	"agent.Pulling.Ref":         "docker.io/cm/pulling:tag",
	"agent.Held.Ref":            "docker.io/cm/held:tag",
	"agent.Failed.Ref":          "docker.io/cm/failed:tag",
	"agent.Disk.Path":           "/var/lib/containerd",
	"agent.State.Pinned":        "docker.io/cm/pinned:tag",
	"agent.Pinning.Status":      agent.PinHonoured,
	"agent.Pinning.OverBudget":  "docker.io/cm/over:tag",
	"agent.Progress.Phase":      agent.PhaseDownloading,
	"image.Image.Ref":           image.MustParseRef("docker.io/cm/desired:tag"),
	"image.Image.Digest":        digest("desired"),
	// An image's priority travels as its place in the list: the test puts it second.
	"image.Image.Priority": 1,
}

func TestWireCarriesEveryField(t *testing.T) {
	t.Parallel()
	f := &filler{t: t, seen: map[string]bool{}}

	var s agent.State
	f.fill("agent.State", reflect.ValueOf(&s).Elem())
	b, err := encodeMessage(message{Type: msgState, State: stateToWire(s.Node, s)})
	require.NoError(t, err)
	m, err := decodeMessage(b)
	require.NoError(t, err)
	f.compare("agent.State", "agent.State", reflect.ValueOf(s), reflect.ValueOf(stateFromWire(m.State)))

	var d agent.Desired
	f.fill("agent.Desired", reflect.ValueOf(&d).Elem())
	require.Len(t, d.Images, 1)
	d.Images = append([]image.Image{{Ref: image.MustParseRef("docker.io/cm/first:tag")}}, d.Images...)
	clean, errs := cleanDesired(d.Images)
	require.Empty(t, errs)
	require.Equal(t, d.Images, clean, "the sample list is clean already")
	b, err = encodeMessage(message{Type: msgDesired, Desired: desiredToWire("n1", d)})
	require.NoError(t, err)
	m, err = decodeMessage(b)
	require.NoError(t, err)
	got := desiredFromWire(m.Desired)
	require.Len(t, got.Images, 2)
	require.Equal(t, d.Images[0], got.Images[0], "the plain first image")
	d.Images, got.Images = d.Images[1:], got.Images[1:]
	f.compare("agent.Desired", "agent.Desired", reflect.ValueOf(d), reflect.ValueOf(got))

	for key := range notOnWire {
		require.True(t, f.seen[key], "notOnWire lists %s, which is no field of the state or desired types: remove it", key)
	}
	for key := range fieldSamples {
		require.True(t, f.seen[key], "fieldSamples lists %s, which is no field of the state or desired types: remove it", key)
	}
}

// filler builds values with every exported field set, and compares them after the trip.
type filler struct {
	t    *testing.T
	n    int             // source of distinct numbers and times
	seen map[string]bool // field keys visited
}

var (
	timeType = reflect.TypeFor[time.Time]()
	refType  = reflect.TypeFor[image.Ref]()
)

// fieldKey is "package.Type.Field", e.g. "agent.State.Images".
func fieldKey(st reflect.Type, f reflect.StructField) string {
	pkg := st.PkgPath()[strings.LastIndex(st.PkgPath(), "/")+1:]
	return pkg + "." + st.Name() + "." + f.Name
}

// fill sets v, reached through the field key, to a non-zero value.
func (f *filler) fill(key string, v reflect.Value) {
	f.t.Helper()
	if sample, ok := fieldSamples[key]; ok {
		if pair, ok := sample.([2]string); ok && v.Kind() == reflect.Map {
			v.Set(reflect.MakeMap(v.Type()))
			v.SetMapIndex(reflect.ValueOf(pair[0]), reflect.ValueOf(pair[1]))
			return
		}
		sv := reflect.ValueOf(sample)
		if v.Kind() == reflect.Slice && sv.Type() == v.Type().Elem() {
			v.Set(reflect.Append(reflect.MakeSlice(v.Type(), 0, 1), sv))
			return
		}
		require.Truef(f.t, sv.Type().ConvertibleTo(v.Type()), "%s: sample of type %s for a %s", key, sv.Type(), v.Type())
		v.Set(sv.Convert(v.Type()))
		return
	}
	f.n++
	switch {
	case v.Type() == timeType:
		v.Set(reflect.ValueOf(time.Date(2025, 1, 2, 3, 4, 5, f.n, time.UTC).Add(time.Duration(f.n) * time.Hour)))
		return
	case v.Type() == refType:
		v.Set(reflect.ValueOf(image.MustParseRef(fmt.Sprintf("docker.io/cm/sample-%d:tag", f.n))))
		return
	}
	switch v.Kind() {
	case reflect.String:
		v.SetString("text of " + key)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(f.n))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(1000 + f.n))
	case reflect.Float32, reflect.Float64:
		v.SetFloat(float64(f.n) + 0.5)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
		f.fill(key, v.Index(0))
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		f.fill(key+"[key]", k)
		f.fill(key+"[value]", e)
		v.SetMapIndex(k, e)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		f.fill(key, v.Elem())
	case reflect.Struct:
		for i := range v.NumField() {
			sf := v.Type().Field(i)
			require.Truef(f.t, sf.IsExported(), "%s: %s has the unexported field %s: teach fill to build one", key, v.Type(), sf.Name)
			fk := fieldKey(v.Type(), sf)
			f.seen[fk] = true
			f.fill(fk, v.Field(i))
		}
	default:
		f.t.Fatalf("%s: cannot fill a %s: teach fill to", key, v.Type())
	}
}

// compare requires got, the value of the field key after the trip, to equal want, or to be
// zero when the field is not carried.
func (f *filler) compare(key, path string, want, got reflect.Value) {
	f.t.Helper()
	if reason, ok := notOnWire[key]; ok {
		require.Truef(f.t, got.IsZero(), "%s is listed as not carried on the wire (%s) but arrives as %v: remove it from notOnWire", path, reason, got)
		return
	}
	require.Falsef(f.t, want.IsZero(), "%s: the sample is zero, so the test would prove nothing", path)
	lost := fmt.Sprintf("%s does not survive the wire: encode and decode it (messages.go) and convert it (convert.go), or list it in notOnWire", path)
	switch {
	case want.Type() == timeType:
		require.Truef(f.t, want.Interface().(time.Time).Equal(got.Interface().(time.Time)), "%s: %v, want %v", lost, got, want)
		return
	case want.Type() == refType:
		require.Equal(f.t, want.Interface(), got.Interface(), lost)
		return
	}
	switch want.Kind() {
	case reflect.Slice:
		require.Equalf(f.t, want.Len(), got.Len(), "%s: length", lost)
		for i := range want.Len() {
			f.compare(key, fmt.Sprintf("%s[%d]", path, i), want.Index(i), got.Index(i))
		}
	case reflect.Map:
		require.Equalf(f.t, want.Len(), got.Len(), "%s: length", lost)
		for _, k := range want.MapKeys() {
			g := got.MapIndex(k)
			require.Truef(f.t, g.IsValid(), "%s: key %v", lost, k)
			f.compare(key+"[value]", fmt.Sprintf("%s[%v]", path, k), want.MapIndex(k), g)
		}
	case reflect.Pointer:
		require.Falsef(f.t, got.IsNil(), "%s: nil", lost)
		f.compare(key, path, want.Elem(), got.Elem())
	case reflect.Struct:
		for i := range want.NumField() {
			sf := want.Type().Field(i)
			f.compare(fieldKey(want.Type(), sf), path+"."+sf.Name, want.Field(i), got.Field(i))
		}
	default:
		require.Equalf(f.t, want.Interface(), got.Interface(), lost)
	}
}

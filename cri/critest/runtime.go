package critest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachemachine/cachemachine/cri"
)

// Method names for SetError and Call.Method.
const (
	MethodVersion     = "Version"
	MethodListImages  = "ListImages"
	MethodImageStatus = "ImageStatus"
	MethodPullImage   = "PullImage"
	MethodRemoveImage = "RemoveImage"
	MethodImageFsInfo = "ImageFsInfo"
)

// DefaultMountpoint is the image filesystem a Runtime reports unless told otherwise: a path
// that does not exist, so that the agent's disk guard cannot measure the disk (as in a pod
// without the image filesystem mounted) unless the test gives it a StatFS.
const DefaultMountpoint = "/nonexistent/critest/images"

// RuntimeOptions configure NewRuntime. The zero value is valid.
type RuntimeOptions struct {
	// Mountpoint is what ImageFsInfo reports. Default: DefaultMountpoint.
	Mountpoint string
}

// Call is one entry of the call log.
type Call struct {
	Method string
	Ref    string    // the image reference, for ImageStatus, PullImage and RemoveImage
	Time   time.Time // when the call began
	End    time.Time // when it returned; zero while in flight
	Err    error     // what it returned
}

type remote struct {
	digest string
	size   uint64
}

// Runtime is an in-memory CRI runtime that behaves like containerd 1.6 for image calls, with
// a fake registry behind PullImage. Its methods have cri.Client's signatures and errors (every
// error wraps a cri sentinel or a context error, with containerd's message), so it serves
// directly as an agent.Runtime in tests and in-process simulations; Server serves one over
// gRPC. The conformance suite runs against both.
//
// A Runtime starts no goroutine and creates a timer only while a pull waits out its latency,
// so one made inside a testing/synctest bubble runs on the bubble's clock. It keeps a call log
// and per-method error injection. All methods are safe for concurrent use.
type Runtime struct {
	mountpoint string

	mu       sync.Mutex            // guards the fields below
	images   map[string]*cri.Image // by image ID
	list     []cri.Image           // ListImages' answer, sorted by ID; nil when stale
	remotes  map[string]remote     // by repo:tag
	errs     map[string]error      // by method
	latency  time.Duration         // of every PullImage
	jitter   time.Duration         // random extra latency, up to this
	hold     chan struct{}         // while non-nil, pulls wait until it is closed
	auth     *cri.Auth             // required for pulls if non-nil
	diskUsed *uint64               // nil: sum of image sizes
	calls    []Call
}

// NewRuntime returns an empty runtime with an empty registry.
func NewRuntime(opts RuntimeOptions) *Runtime {
	r := &Runtime{
		mountpoint: opts.Mountpoint,
		images:     make(map[string]*cri.Image),
		remotes:    make(map[string]remote),
		errs:       make(map[string]error),
	}
	if r.mountpoint == "" {
		r.mountpoint = DefaultMountpoint
	}
	return r
}

// AddRemote makes ref (repo:tag) pullable from the fake registry with the given manifest
// digest and image size. The image ID is derived from the digest, so two tags with one
// digest pull to one image. Adding a ref again moves the tag in the registry.
func (r *Runtime) AddRemote(ref, digest string, size uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.remotes[normalize(ref)] = remote{digest: digest, size: size}
}

// RemoveRemote deletes ref from the fake registry; images already pulled stay.
func (r *Runtime) RemoveRemote(ref string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.remotes, normalize(ref))
}

// Load stores ref, which the registry must serve (AddRemote), as a pull would, but without a
// call in the log or any wait: an image the node had before the test began.
func (r *Runtime) Load(ref string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, err := r.pullLocked(ref, r.auth)
	return err
}

// SetPullLatency makes every PullImage take d (a slow or hung registry). A pull whose ctx
// ends first fails with cri.ErrDeadline or context.Canceled and stores nothing.
func (r *Runtime) SetPullLatency(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.latency = d
}

// SetPullJitter adds to every pull's latency a random extra, uniform between 0 and d.
func (r *Runtime) SetPullJitter(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.jitter = d
}

// HoldPulls makes pulls that start from now on wait, until ReleasePulls or until their ctx
// ends (a hung registry).
func (r *Runtime) HoldPulls() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold == nil {
		r.hold = make(chan struct{})
	}
}

// ReleasePulls lets every held pull go on; later pulls are not held.
func (r *Runtime) ReleasePulls() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hold != nil {
		close(r.hold)
		r.hold = nil
	}
}

// SetError makes every call of method (MethodPullImage, ...) fail with err until
// SetError(method, nil); a pull that is waiting (latency, HoldPulls) when it is set fails
// with it too, like a pull in flight when the runtime dies. err is returned as it is: for callers of a Server, make it a gRPC
// status error (cri.Client maps its code); for direct callers, wrap a cri sentinel.
func (r *Runtime) SetError(method string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		delete(r.errs, method)
		return
	}
	r.errs[method] = err
}

// SetPullAuth makes the registry require these credentials: a pull without them fails with
// cri.ErrUnauthorized, and with "401 Unauthorized" in the message, as containerd reports it.
func (r *Runtime) SetPullAuth(username, password string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.auth = &cri.Auth{Username: username, Password: password}
}

// SetDiskUsage fixes the used bytes ImageFsInfo reports (default: the sum of image sizes).
func (r *Runtime) SetDiskUsage(used uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.diskUsed = &used
}

// Calls returns a copy of the call log, oldest first.
func (r *Runtime) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// Images returns a copy of the images the runtime holds, sorted by ID.
func (r *Runtime) Images() []cri.Image {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.listLocked("")
}

// Version identifies the fake: RuntimeName "critest", API v1.
func (r *Runtime) Version(context.Context) (cri.Version, error) {
	i, err := r.begin(MethodVersion, "")
	if err != nil {
		return cri.Version{}, r.end(i, err)
	}
	return cri.Version{RuntimeName: "critest", RuntimeVersion: "0.0.0", RuntimeAPIVersion: "v1"}, r.end(i, nil)
}

// ListImages returns every image, sorted by ID. The images share their Tags and Digests with
// later answers: callers must not modify them.
func (r *Runtime) ListImages(context.Context) ([]cri.Image, error) {
	return r.listImages("")
}

// listImages is ListImages with containerd's filter (a reference or an image ID; "" for all).
func (r *Runtime) listImages(filter string) ([]cri.Image, error) {
	i, err := r.begin(MethodListImages, "")
	if err != nil {
		return nil, r.end(i, err)
	}
	r.mu.Lock()
	var out []cri.Image
	if filter != "" {
		if !strings.HasPrefix(filter, "sha256:") {
			filter = normalize(filter)
		}
		out = r.listLocked(filter)
	} else {
		// Hundreds of simulated nodes list their images on every pass: the answer is built
		// once per change, and each caller gets its own slice of it.
		if r.list == nil {
			r.list = r.listLocked("")
		}
		out = slices.Clone(r.list)
	}
	r.mu.Unlock()
	return out, r.end(i, nil)
}

// ImageStatus returns the image that ref names (a tag, a repo@digest or an image ID), or nil
// when there is none.
func (r *Runtime) ImageStatus(_ context.Context, ref string) (*cri.Image, error) {
	i, err := r.begin(MethodImageStatus, ref)
	if err != nil {
		return nil, r.end(i, err)
	}
	r.mu.Lock()
	var out *cri.Image
	if img := r.findLocked(ref); img != nil {
		c := copyImage(img)
		out = &c
	}
	r.mu.Unlock()
	return out, r.end(i, nil)
}

// PullImage resolves ref (repo:tag or repo@digest) in the fake registry, after the pull
// latency, and stores the image as containerd does; it returns the image ID.
func (r *Runtime) PullImage(ctx context.Context, ref string, auth *cri.Auth) (string, error) {
	i, err := r.begin(MethodPullImage, ref)
	if err != nil {
		return "", r.end(i, err)
	}
	r.mu.Lock()
	d, hold := r.latency, r.hold
	if r.jitter > 0 {
		d += rand.N(r.jitter + 1)
	}
	r.mu.Unlock()
	if err := wait(ctx, d, hold); err != nil {
		return "", r.end(i, ctxError("pull "+ref, err))
	}
	r.mu.Lock()
	// An error injected while the pull waited fails it too: the runtime died mid-pull.
	err = r.errs[MethodPullImage]
	var id string
	if err == nil {
		id, err = r.pullLocked(ref, auth)
	}
	r.mu.Unlock()
	return id, r.end(i, err)
}

// RemoveImage deletes the image that ref names; removing an absent image succeeds.
func (r *Runtime) RemoveImage(_ context.Context, ref string) error {
	i, err := r.begin(MethodRemoveImage, ref)
	if err != nil {
		return r.end(i, err)
	}
	r.mu.Lock()
	if img := r.findLocked(ref); img != nil {
		delete(r.images, img.ID)
		r.list = nil
	}
	r.mu.Unlock()
	return r.end(i, nil)
}

// ImageFsInfo reports one image filesystem at the mountpoint, using the sum of the image
// sizes (or SetDiskUsage's value).
func (r *Runtime) ImageFsInfo(context.Context) ([]cri.FsUsage, error) {
	i, err := r.begin(MethodImageFsInfo, "")
	if err != nil {
		return nil, r.end(i, err)
	}
	r.mu.Lock()
	fs := cri.FsUsage{Mountpoint: r.mountpoint, InodesUsed: uint64(len(r.images))}
	if r.diskUsed != nil {
		fs.UsedBytes = *r.diskUsed
	} else {
		for _, img := range r.images {
			fs.UsedBytes += img.Size
		}
	}
	r.mu.Unlock()
	return []cri.FsUsage{fs}, r.end(i, nil)
}

// begin logs a call and returns its index in the log and its injected error, if any.
func (r *Runtime) begin(method, ref string) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, Call{Method: method, Ref: ref, Time: time.Now()})
	return len(r.calls) - 1, r.errs[method]
}

// end records the end of call i, which returns err.
func (r *Runtime) end(i int, err error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[i].End, r.calls[i].Err = time.Now(), err
	return err
}

// wait waits d and until hold is closed (each when set), or until ctx ends.
func wait(ctx context.Context, d time.Duration, hold <-chan struct{}) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var timer <-chan time.Time
	if d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	for timer != nil || hold != nil {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer:
			timer = nil
		case <-hold:
			hold = nil
		}
	}
	return nil
}

func (r *Runtime) listLocked(filter string) []cri.Image {
	out := make([]cri.Image, 0, len(r.images))
	for _, img := range r.images {
		if filter != "" && !matches(img, filter) {
			continue
		}
		out = append(out, copyImage(img))
	}
	slices.SortFunc(out, func(a, b cri.Image) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// findLocked returns the image that ref names: its ID, one of its tags or digest refs.
func (r *Runtime) findLocked(ref string) *cri.Image {
	if img, ok := r.images[ref]; ok {
		return img
	}
	ref = normalize(ref)
	for _, img := range r.images {
		if matches(img, ref) {
			return img
		}
	}
	return nil
}

// pullLocked resolves ref in the fake registry and stores the image as containerd does.
func (r *Runtime) pullLocked(ref string, auth *cri.Auth) (string, error) {
	op := "pull " + ref
	ref = normalize(ref)
	if r.auth != nil && (auth == nil || *auth != *r.auth) {
		return "", &callError{op: op, sentinel: cri.ErrUnauthorized, code: codes.Unknown,
			msg: "failed to pull and unpack image \"" + ref + "\": failed to resolve reference \"" + ref + "\": " +
				"pulling from host fake failed with status code [manifests]: 401 Unauthorized"}
	}
	repo, tag, dgst := splitRef(ref)
	var rm remote
	found := false
	if dgst != "" {
		for name, rr := range r.remotes {
			if rr.digest == dgst && repoOf(name) == repo {
				rm, found = rr, true
				break
			}
		}
	} else {
		rm, found = r.remotes[ref]
	}
	if !found {
		return "", &callError{op: op, sentinel: cri.ErrNotFound, code: codes.NotFound,
			msg: "failed to pull and unpack image \"" + ref + "\": failed to resolve reference \"" + ref + "\": " + ref + ": not found"}
	}
	r.list = nil
	id := ImageID(rm.digest)
	if tag != "" {
		// A tag points to one image; pulling it after it moved leaves the old image dangling.
		for _, img := range r.images {
			if img.ID != id {
				img.Tags = slices.DeleteFunc(img.Tags, func(t string) bool { return t == ref })
			}
		}
	}
	img, ok := r.images[id]
	if !ok {
		img = &cri.Image{ID: id, Size: rm.size}
		r.images[id] = img
	}
	if tag != "" && !slices.Contains(img.Tags, ref) {
		img.Tags = append(img.Tags, ref)
	}
	if d := repo + "@" + rm.digest; !slices.Contains(img.Digests, d) {
		img.Digests = append(img.Digests, d)
	}
	return id, nil
}

// callError is a failure of the fake runtime in both of its forms: returned by a Runtime
// method, it reads as cri.Client would report it ("pull REF: image not found: <containerd's
// message>") and wraps the same sentinel; returned by a Server's handler, gRPC sends its code
// and containerd's message, from which cri.Client builds that same error.
type callError struct {
	op       string
	sentinel error      // what errors.Is finds: a cri sentinel or a context error
	code     codes.Code // what the gRPC face sends
	msg      string     // containerd's message; "" when the sentinel says it all
}

func (e *callError) Error() string {
	if e.msg == "" {
		return e.op + ": " + e.sentinel.Error()
	}
	return e.op + ": " + e.sentinel.Error() + ": " + e.msg
}

func (e *callError) Unwrap() error { return e.sentinel }

// GRPCStatus is what a gRPC server sends for e.
func (e *callError) GRPCStatus() *status.Status {
	if e.msg == "" {
		return status.New(e.code, e.sentinel.Error())
	}
	return status.New(e.code, e.msg)
}

// ctxError is the error of a call whose ctx ended: cri.ErrDeadline for a deadline,
// context.Canceled for a cancellation.
func ctxError(op string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return &callError{op: op, sentinel: cri.ErrDeadline, code: codes.DeadlineExceeded}
	}
	return &callError{op: op, sentinel: context.Canceled, code: codes.Canceled}
}

// ImageID is the image ID the fake runtime gives the image with this manifest digest.
func ImageID(digest string) string {
	sum := sha256.Sum256([]byte("config of " + digest))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func matches(img *cri.Image, ref string) bool {
	return img.ID == ref || slices.Contains(img.Tags, ref) || slices.Contains(img.Digests, ref)
}

func copyImage(img *cri.Image) cri.Image {
	c := *img
	c.Tags = slices.Clone(img.Tags)
	c.Digests = slices.Clone(img.Digests)
	return c
}

// splitRef splits repo:tag or repo@digest; the ':' of a registry port is not a tag. Like
// containerd, it drops the tag of repo:tag@digest: the digest is pulled and recorded, the
// tag is not.
func splitRef(ref string) (repo, tag, digest string) {
	if r, d, ok := strings.Cut(ref, "@"); ok {
		repo, _, _ = splitRef(r)
		return repo, "", d
	}
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[:i], ref[i+1:], ""
	}
	return ref, "", ""
}

func repoOf(ref string) string {
	repo, _, _ := splitRef(ref)
	return repo
}

// normalize adds the implicit :latest tag; unlike containerd it adds no docker.io prefix.
func normalize(ref string) string {
	if strings.HasPrefix(ref, "sha256:") {
		return ref
	}
	if _, tag, dgst := splitRef(ref); tag == "" && dgst == "" {
		return ref + ":latest"
	}
	return ref
}

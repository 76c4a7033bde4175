package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/viper"

	"github.com/bgpedge/bgpedge/internal/atomicfile"
	"github.com/bgpedge/bgpedge/internal/lograte"
	"github.com/bgpedge/bgpedge/internal/natsconn"
)

// FleetConfig is the `fleet:` section: central configuration from a NATS
// JetStream key-value bucket.
type FleetConfig struct {
	// Enabled watches the bucket and applies what central publishes.
	Enabled bool `mapstructure:"enabled"`
	// NATS is the connection to central: url, credentials, tls (the block
	// every NATS user of bgpedge shares).
	NATS natsconn.Config `mapstructure:"nats"`
	// Bucket holds the documents: key agent.<agent id> wins over group.<group>.
	Bucket string `mapstructure:"bucket"`
	// StatusBucket receives this agent's status under key <agent id>.
	StatusBucket string `mapstructure:"status_bucket"`
	// Group selects the group document.
	Group string `mapstructure:"group"`
	// HTTPURL, instead of NATS, polls <http_url>/agent/<agent id>.yaml, or
	// when that is 404 <http_url>/group/<group>.yaml, with If-None-Match;
	// status is PUT to <http_url>/status/<agent id>.json (best effort).
	HTTPURL string `mapstructure:"http_url"`
	// PollInterval is how often HTTPURL is polled.
	PollInterval time.Duration `mapstructure:"poll_interval"`
}

// DefaultFleetConfig is off, with the documented bucket names.
func DefaultFleetConfig() FleetConfig {
	return FleetConfig{
		NATS:         natsconn.Config{URL: "nats://127.0.0.1:4222"},
		Bucket:       "bgpedge-fleet",
		StatusBucket: "bgpedge-fleet-status",
		Group:        "default",
		PollInterval: 30 * time.Second,
	}
}

// Validate checks the section; errors name the full key.
func (c FleetConfig) Validate() error {
	if !c.Enabled {
		return nil
	}
	var errs []error
	if c.HTTPURL != "" {
		u, err := url.Parse(c.HTTPURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("fleet.http_url: %q is not an http(s) URL", c.HTTPURL))
		}
		if c.PollInterval < time.Second {
			errs = append(errs, errors.New("fleet.poll_interval: must be at least 1s"))
		}
	} else if c.NATS.URL == "" {
		errs = append(errs, errors.New("fleet.nats.url: is required when fleet.enabled is true (or set fleet.http_url)"))
	}
	for key, v := range map[string]string{"bucket": c.Bucket, "status_bucket": c.StatusBucket, "group": c.Group} {
		if v == "" || strings.ContainsAny(v, ".*> \t/") {
			errs = append(errs, fmt.Errorf("fleet.%s: %q must be a non-empty name without '.', '*', '>', '/' or spaces", key, v))
		}
	}
	c.NATS.Validate("fleet.nats", false, func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf(key+": "+format, args...))
	})
	return errors.Join(errs...)
}

// ErrFleetSection is returned for a central document that tries to change
// the fleet section itself (it could cut the agent off from central).
var ErrFleetSection = errors.New("a fleet document must not contain the fleet section")

// FleetDoc is one central configuration document.
type FleetDoc struct {
	Key      string `json:"key"` // agent.<id> or group.<group>
	Revision uint64 `json:"revision"`
	SHA256   string `json:"sha256"`
	Value    []byte `json:"-"`
}

func newFleetDoc(key string, rev uint64, value []byte) FleetDoc {
	sum := sha256.Sum256(value)
	return FleetDoc{Key: key, Revision: rev, SHA256: hex.EncodeToString(sum[:]), Value: value}
}

// FleetStatus is what an agent reports to the status bucket (shaped after
// OpAMP's RemoteConfigStatus).
type FleetStatus struct {
	Agent    string    `json:"agent"`
	Key      string    `json:"key,omitempty"`
	Revision uint64    `json:"revision"`
	SHA256   string    `json:"sha256,omitempty"`
	State    string    `json:"state"` // applying, applied, failed
	Error    string    `json:"error,omitempty"`
	Time     time.Time `json:"time"`
	Version  string    `json:"version"`
}

// Fleet states.
const (
	FleetApplying = "applying"
	FleetApplied  = "applied"
	FleetFailed   = "failed"
	// FleetPendingRestart: the document validated but changes a key only a
	// restart applies; it is saved as pending, and the next start tries it.
	FleetPendingRestart = "pending-restart"
)

// configSource loads the effective configuration: the local file and
// environment with the current central document merged over the file.
type configSource struct {
	opts LoadOptions

	// applying is held from loading a configuration to applying it (and
	// setting the overlay it came from), so a SIGHUP reload and a central
	// document cannot interleave and leave the agent on the older one.
	applying sync.Mutex

	mu      sync.Mutex
	overlay []byte
}

// applyOverlay loads the configuration with overlay (nil: the local one
// alone), applies it, and on success makes overlay the one reloads use.
// Reloads wait meanwhile.
func (s *configSource) applyOverlay(ctx context.Context, overlay []byte, apply func(context.Context, Config) error) error {
	s.applying.Lock()
	defer s.applying.Unlock()
	cfg, err := loadWithOverlay(s.opts, overlay)
	if err != nil {
		return err
	}
	if err := apply(ctx, cfg); err != nil {
		return err
	}
	s.setOverlay(overlay)
	return nil
}

func (s *configSource) setOverlay(doc []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.overlay = doc
}

// load reads and validates: defaults < file < central document < environment < flags.
func (s *configSource) load() (Config, error) {
	s.mu.Lock()
	overlay := s.overlay
	s.mu.Unlock()
	return loadWithOverlay(s.opts, overlay)
}

func loadWithOverlay(opts LoadOptions, overlay []byte) (Config, error) {
	if len(overlay) == 0 {
		cfg, err := Load(opts)
		if err != nil {
			return Config{}, err
		}
		return cfg, cfg.Validate()
	}
	if err := checkFleetDoc(overlay); err != nil {
		return Config{}, err
	}
	v := viper.NewWithOptions(viper.KeyDelimiter(keyDelim))
	v.SetConfigType("yaml")
	file := opts.File
	if file == "" {
		file = DefaultConfigFile
	}
	if b, err := os.ReadFile(file); err == nil {
		if err := v.ReadConfig(bytes.NewReader(b)); err != nil {
			return Config{}, fmt.Errorf("%w: %s: %w", ErrInvalidConfig, file, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) || opts.FileRequired {
		return Config{}, readError(file, err)
	}
	if err := v.MergeConfig(bytes.NewReader(overlay)); err != nil {
		return Config{}, fmt.Errorf("%w: central document: %w", ErrInvalidConfig, err)
	}
	cfg, err := decode(v, opts.Overrides)
	if err != nil {
		return Config{}, err
	}
	return cfg, cfg.Validate()
}

// checkFleetDoc decodes a central document on its own, strictly.
func checkFleetDoc(doc []byte) error {
	v := viper.NewWithOptions(viper.KeyDelimiter(keyDelim))
	v.SetConfigType("yaml")
	if err := v.ReadConfig(bytes.NewReader(doc)); err != nil {
		return fmt.Errorf("%w: central document: %w", ErrInvalidConfig, err)
	}
	if v.IsSet("fleet") {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, ErrFleetSection)
	}
	if _, err := decodeSettings(v.AllSettings()); err != nil {
		return err
	}
	return nil
}

// docStore keeps one central document in agent.state_dir: <base>.yaml, and
// its key, revision and hash in <base>.json.
type docStore struct {
	dir, base string
}

// lastGoodStore holds the last document that ran: applied to the running
// agent, or started with after a restart. The agent starts from it when
// central is unreachable.
func lastGoodStore(dir string) docStore { return docStore{dir: dir, base: "fleet-last-good"} }

// pendingStore holds a document that needs a restart to apply; the next
// start tries it.
func pendingStore(dir string) docStore { return docStore{dir: dir, base: "fleet-pending"} }

// rejectedStore holds a pending document the agent did not get ready with
// at a start; it is not tried again until central publishes another.
func rejectedStore(dir string) docStore { return docStore{dir: dir, base: "fleet-rejected"} }

// trialPath marks a start that tries the pending document. A start that
// finds it left over knows the last one never got ready with it.
func trialPath(dir string) string { return filepath.Join(dir, "fleet-pending.trial") }

func (l docStore) paths() (doc, meta string) {
	return filepath.Join(l.dir, l.base+".yaml"), filepath.Join(l.dir, l.base+".json")
}

// save replaces the document atomically: a crash leaves either the old pair
// or the new one (the meta file, written last, names the hash).
func (l docStore) save(d FleetDoc) error {
	if err := os.MkdirAll(l.dir, 0o750); err != nil {
		return fmt.Errorf("fleet: state dir: %w", err)
	}
	docPath, metaPath := l.paths()
	meta, err := json.Marshal(d)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(docPath, d.Value); err != nil {
		return err
	}
	return atomicfile.Write(metaPath, meta)
}

// clear removes the document; the meta file goes first, which alone makes
// load find none.
func (l docStore) clear() error {
	docPath, metaPath := l.paths()
	for _, p := range []string{metaPath, docPath} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("fleet: %s: %w", l.base, err)
		}
	}
	return atomicfile.SyncDir(l.dir)
}

// load returns the document, or ok=false if there is none or it does not
// match its recorded hash.
func (l docStore) load() (FleetDoc, bool, error) {
	docPath, metaPath := l.paths()
	meta, err := os.ReadFile(metaPath)
	if errors.Is(err, os.ErrNotExist) {
		return FleetDoc{}, false, nil
	}
	if err != nil {
		return FleetDoc{}, false, fmt.Errorf("fleet: %s: %w", l.base, err)
	}
	var d FleetDoc
	if err := json.Unmarshal(meta, &d); err != nil {
		return FleetDoc{}, false, fmt.Errorf("fleet: %s meta: %w", l.base, err)
	}
	value, err := os.ReadFile(docPath)
	if err != nil {
		return FleetDoc{}, false, fmt.Errorf("fleet: %s: %w", l.base, err)
	}
	if got := newFleetDoc(d.Key, d.Revision, value); got.SHA256 != d.SHA256 {
		return FleetDoc{}, false, fmt.Errorf("fleet: %s document does not match its hash", l.base)
	}
	d.Value = value
	return d, true, nil
}

// fleetConnect dials NATS with the section's credentials.
func fleetConnect(c FleetConfig, name string) (*nats.Conn, error) {
	opts, err := c.NATS.Options(name)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	opts = append(opts, nats.MaxReconnects(-1), nats.RetryOnFailedConnect(false))
	nc, err := nats.Connect(c.NATS.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("fleet: connect %s: %w", c.NATS.URL, err)
	}
	return nc, nil
}

// bucket opens a key-value bucket, creating it when missing.
func bucket(ctx context.Context, js jetstream.JetStream, name string) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, name)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, History: 5})
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("fleet: bucket %s: %w", name, err)
	}
	return kv, nil
}

// fleetWatcher applies central documents to a running agent.
type fleetWatcher struct {
	cfg     FleetConfig
	agentID string
	src     *configSource
	dir     string // agent.state_dir: the last-good, pending and rejected documents
	apply   func(context.Context, Config) error
	log     *slog.Logger

	mu      sync.Mutex
	applied FleetDoc // the document in effect (zero: none)
	trying  bool     // applied is the pending document, on trial until the agent is ready
	limited *lograte.Logger
	failed  struct { // the last document that did not apply, until another comes
		doc   FleetDoc // zero: the revert to the local configuration
		state string   // FleetFailed or FleetPendingRestart
		err   error
	}
}

// errSetAside is the status error of a pending document the agent did not
// get ready with.
var errSetAside = fmt.Errorf("the agent did not get ready with this document at %d starts, and started without it; publish a corrected document", maxTrials)

// maxTrials is how many starts may try a pending document without getting
// ready before it is set aside. A stop during a slow start (a restart, a
// package upgrade) counts as one, and must not condemn a good document.
const maxTrials = 2

// trials reads the trial mark: the starts that tried the pending document
// and did not get ready with it (0 without a mark).
func trials(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// startConfig returns what the agent starts with: the document pending a
// restart, on trial (each start that tries it counts in the trial mark
// until the agent is ready; after maxTrials the document is set aside);
// else the last-good document; else cfg, the local configuration.
func (w *fleetWatcher) startConfig(cfg Config) Config {
	pending, trial := pendingStore(w.dir), trialPath(w.dir)
	tried := trials(trial)
	last, lastOK, lastErr := lastGoodStore(w.dir).load()
	p, ok, err := pending.load()
	switch {
	case err != nil:
		w.log.Warn("fleet: ignoring the pending document", "err", err)
	case ok && lastOK && last.SHA256 == p.SHA256 && last.Key == p.Key:
		// Promoted already: a crash cut ready() short.
	case ok && tried >= maxTrials:
		w.log.Error("fleet: the agent did not get ready with the pending document; it is set aside", "key", p.Key, "revision", p.Revision, "sha256", p.SHA256, "starts", tried)
		if err := rejectedStore(w.dir).save(p); err != nil {
			w.log.Error("fleet: saving the rejected document", "err", err)
		}
	case ok:
		c, err := loadWithOverlay(w.src.opts, p.Value)
		if err == nil {
			err = atomicfile.Write(trial, []byte(strconv.Itoa(tried+1)))
		}
		if err == nil {
			w.src.setOverlay(p.Value)
			w.applied, w.trying = p, true
			w.log.Info("fleet: starting from the document that was pending a restart, on trial until ready", "key", p.Key, "revision", p.Revision, "sha256", p.SHA256, "start", tried+1)
			return c
		}
		w.log.Warn("fleet: the pending document does not apply over the local configuration", "err", err)
	}
	if ok || err != nil {
		if err := pending.clear(); err != nil {
			w.log.Warn("fleet: removing the pending document", "err", err)
		}
	}
	if err := os.Remove(trial); err != nil && !errors.Is(err, os.ErrNotExist) {
		w.log.Warn("fleet: removing the trial mark", "err", err)
	}
	if r, ok, _ := rejectedStore(w.dir).load(); ok {
		w.failed.doc, w.failed.state, w.failed.err = r, FleetFailed, errSetAside
	}
	if lastErr != nil {
		w.log.Warn("fleet: ignoring the last-good document", "err", lastErr)
		return cfg
	}
	if !lastOK {
		return cfg
	}
	c, err := loadWithOverlay(w.src.opts, last.Value)
	if err != nil {
		w.log.Warn("fleet: the last-good document no longer applies over the local configuration", "err", err)
		return cfg
	}
	w.src.setOverlay(last.Value)
	w.applied = last
	w.log.Info("fleet: starting from the last-good document", "key", last.Key, "revision", last.Revision, "sha256", last.SHA256)
	return c
}

// ready is called once the agent is ready: a document on trial has
// started, and becomes the last-good one.
func (w *fleetWatcher) ready() {
	w.mu.Lock()
	d, trying := w.applied, w.trying
	w.trying = false
	w.mu.Unlock()
	if !trying {
		return
	}
	err := lastGoodStore(w.dir).save(d)
	if rerr := os.Remove(trialPath(w.dir)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		w.log.Error("fleet: removing the trial mark", "err", rerr)
	}
	if err != nil {
		// The document stays pending: the next start tries it afresh.
		w.log.Error("fleet: saving last-good document", "err", err)
		return
	}
	w.dropPending()
	w.log.Info("fleet: the agent is ready with the document that was pending; it is the last-good document now", "key", d.Key, "revision", d.Revision)
}

// keepLastGood makes d, which runs, the last-good document if it is not
// already (a revert that waited for a restart removed it).
func (w *fleetWatcher) keepLastGood(d FleetDoc) {
	st := lastGoodStore(w.dir)
	if cur, ok, _ := st.load(); ok && cur.SHA256 == d.SHA256 && cur.Key == d.Key {
		return
	}
	if err := st.save(d); err != nil {
		w.log.Error("fleet: saving last-good document", "err", err)
	}
}

// run watches the agent's and the group's keys until ctx ends, reconnecting
// with backoff while central is unreachable (the agent keeps running on
// what it has).
func (w *fleetWatcher) run(ctx context.Context) {
	if w.cfg.HTTPURL != "" {
		w.poll(ctx)
		return
	}
	wait := time.Second
	for ctx.Err() == nil {
		err := w.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		msg := "fleet: central unreachable, keeping the current configuration"
		if errors.Is(err, errWatchEnded) {
			msg = "fleet: the server ended the watch (bucket deleted or lost?), keeping the current configuration and watching again"
		}
		w.log.Warn(msg, "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Minute)
	}
}

// errWatchEnded is the watch closed by the server side, as when central
// deletes the bucket: the agent notices some 20 s later (nats.go's consumer
// heartbeats) and watches again, creating the bucket if it is gone.
var errWatchEnded = errors.New("fleet: watch ended")

func (w *fleetWatcher) watch(ctx context.Context) error {
	nc, err := fleetConnect(w.cfg, "bgpedge-agent-"+w.agentID)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("fleet: jetstream: %w", err)
	}
	kv, err := bucket(ctx, js, w.cfg.Bucket)
	if err != nil {
		return err
	}
	status, err := bucket(ctx, js, w.cfg.StatusBucket)
	if err != nil {
		return err
	}
	agentKey, groupKey := "agent."+w.agentID, "group."+w.cfg.Group
	watcher, err := kv.WatchFiltered(ctx, []string{agentKey, groupKey})
	if err != nil {
		return fmt.Errorf("fleet: watch: %w", err)
	}
	defer watcher.Stop()

	docs := map[string]FleetDoc{}
	initial := true
	// A missing document is a deletion only with its delete marker: a bucket
	// central lost (and this agent created again, empty) is not one.
	deleted := false
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-watcher.Updates():
			if !ok {
				return errWatchEnded
			}
			if e != nil {
				if e.Operation() == jetstream.KeyValuePut {
					docs[e.Key()] = newFleetDoc(e.Key(), e.Revision(), e.Value())
				} else {
					delete(docs, e.Key())
					deleted = true
				}
				if initial {
					continue // apply once the initial values are all in
				}
			}
			initial = false
			d, ok := docs[agentKey]
			if !ok {
				d, ok = docs[groupKey]
			}
			report := func(d FleetDoc, state string, err error) { w.reportKV(ctx, status, d, state, err) }
			if !ok {
				if deleted {
					w.revert(ctx, report)
				}
				continue
			}
			w.applyDoc(ctx, d, report)
		}
	}
}

// applyDoc decodes d strictly over the local configuration, validates it,
// and applies it; the agent keeps the old parts if anything fails.
func (w *fleetWatcher) applyDoc(ctx context.Context, d FleetDoc, report func(FleetDoc, string, error)) {
	w.mu.Lock()
	cur := w.applied
	w.mu.Unlock()
	if cur.SHA256 == d.SHA256 && cur.Key == d.Key {
		if w.failed.err != nil {
			// Central went back to what runs: a document that was pending
			// or rejected in between is no longer wanted. (Unchanged polls
			// skip this: only a document that did not apply leaves files.)
			w.dropPending()
			w.clearStore(rejectedStore(w.dir))
			w.keepLastGood(d)
			w.failed.err = nil
		}
		report(d, FleetApplied, nil)
		return
	}
	if f := w.failed; f.err != nil && f.doc.SHA256 == d.SHA256 && f.doc.Key == d.Key &&
		(f.doc.Revision == d.Revision || !errors.Is(f.err, ErrDeliversLess)) {
		// Polled again unchanged: do not retry it. A document refused only
		// because its brokers did not answer is tried again when central
		// publishes it again, even with the same bytes.
		report(d, f.state, f.err)
		return
	}
	w.clearStore(rejectedStore(w.dir)) // a new document: the rejected one is history
	report(d, FleetApplying, nil)
	err := w.src.applyOverlay(ctx, d.Value, w.apply)
	if errors.Is(err, ErrRestartRequired) {
		// Valid over the local file; only the running parts cannot take
		// it. The next start tries it (startConfig).
		if serr := pendingStore(w.dir).save(d); serr != nil {
			err = fmt.Errorf("%w; saving it for the next start: %w", err, serr)
		} else {
			w.log.Warn("fleet: document needs a restart to apply; saved, the next start tries it", "key", d.Key, "revision", d.Revision, "err", err)
			w.notApplied(d, FleetPendingRestart, err, report)
			return
		}
	}
	w.dropPending()
	if err != nil {
		w.log.Error("fleet: document not applied, keeping the current configuration", "key", d.Key, "revision", d.Revision, "err", err)
		w.notApplied(d, FleetFailed, err, report)
		return
	}
	w.mu.Lock()
	w.applied = d
	w.mu.Unlock()
	w.failed.err = nil
	if err := lastGoodStore(w.dir).save(d); err != nil {
		w.log.Error("fleet: saving last-good document", "err", err)
	}
	w.log.Info("fleet: document applied", "key", d.Key, "revision", d.Revision, "sha256", d.SHA256)
	report(d, FleetApplied, nil)
}

func (w *fleetWatcher) notApplied(d FleetDoc, state string, err error, report func(FleetDoc, string, error)) {
	w.failed.doc, w.failed.state, w.failed.err = d, state, err
	report(d, state, err)
}

// dropPending removes a pending document central no longer publishes.
func (w *fleetWatcher) dropPending() { w.clearStore(pendingStore(w.dir)) }

func (w *fleetWatcher) clearStore(st docStore) {
	if _, ok, _ := st.load(); !ok {
		return
	}
	if err := st.clear(); err != nil {
		w.log.Error("fleet: removing a saved document", "err", err)
	}
}

// revert returns to the local configuration alone: central deleted the
// documents for this agent and its group. The last-good document goes once
// the local configuration runs (or waits for a restart), so a restart runs
// it too; while the revert fails, the document that runs stays last-good.
func (w *fleetWatcher) revert(ctx context.Context, report func(FleetDoc, string, error)) {
	var none FleetDoc
	w.dropPending()
	w.clearStore(rejectedStore(w.dir))
	if f := w.failed; f.err != nil && f.doc.Key == "" {
		report(none, f.state, f.err) // tried already: not again until a document comes
		return
	}
	w.mu.Lock()
	cur := w.applied
	w.mu.Unlock()
	if cur.Key == "" {
		// The local configuration runs already; a document that failed or
		// waited for a restart is gone.
		w.clearStore(lastGoodStore(w.dir))
		if w.failed.err != nil {
			w.failed.err = nil
			report(none, FleetApplied, nil)
		}
		return
	}
	report(none, FleetApplying, nil)
	err := w.src.applyOverlay(ctx, nil, w.apply)
	switch {
	case errors.Is(err, ErrRestartRequired):
		w.log.Warn("fleet: no central document; the local configuration needs a restart to apply", "err", err)
		w.clearStore(lastGoodStore(w.dir))
		w.notApplied(none, FleetPendingRestart, err, report)
	case err != nil:
		w.log.Error("fleet: no central document, but the local configuration does not apply; keeping the current one", "err", err)
		w.notApplied(none, FleetFailed, err, report)
	default:
		w.clearStore(lastGoodStore(w.dir))
		w.mu.Lock()
		w.applied = none
		w.mu.Unlock()
		w.log.Info("fleet: no central document; reverted to the local configuration", "previous_key", cur.Key, "previous_revision", cur.Revision)
		report(none, FleetApplied, nil)
	}
}

func (w *fleetWatcher) status(d FleetDoc, state string, err error) []byte {
	st := FleetStatus{Agent: w.agentID, Key: d.Key, Revision: d.Revision, SHA256: d.SHA256, State: state, Time: time.Now().UTC(), Version: Version}
	if err != nil {
		st.Error = err.Error()
	}
	b, _ := json.Marshal(st)
	return b
}

func (w *fleetWatcher) reportKV(ctx context.Context, status jetstream.KeyValue, d FleetDoc, state string, err error) {
	if _, err := status.Put(ctx, w.agentID, w.status(d, state, err)); err != nil {
		w.log.Warn("fleet: reporting status", "err", err)
	}
}

// poll fetches the agent's or the group's document over HTTP(S) every
// poll_interval, with If-None-Match so an unchanged document costs a 304.
func (w *fleetWatcher) poll(ctx context.Context) {
	client := &http.Client{Timeout: 30 * time.Second}
	base := strings.TrimSuffix(w.cfg.HTTPURL, "/")
	etags := map[string]string{}
	docs := map[string]FleetDoc{}
	served := false
	report := func(d FleetDoc, state string, err error) {
		req, rerr := http.NewRequestWithContext(ctx, http.MethodPut, base+"/status/"+url.PathEscape(w.agentID)+".json", bytes.NewReader(w.status(d, state, err)))
		if rerr != nil {
			return
		}
		req.Header.Set("Content-Type", "application/json")
		resp, rerr := client.Do(req)
		if rerr != nil {
			w.retryLog("status", "fleet: reporting status", rerr)
			return
		}
		resp.Body.Close()
	}
	for {
		d, err := w.fetch(ctx, client, base, etags, docs)
		switch {
		case err != nil:
			w.retryLog("poll", "fleet: central unreachable, keeping the current configuration", err)
		case d.Key != "":
			served = true
			w.applyDoc(ctx, d, report)
		case served:
			// Both answer 404 after one served a document: deleted. A
			// server that never served one may be the wrong one.
			w.revert(ctx, report)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(w.cfg.PollInterval):
		}
	}
}

func (w *fleetWatcher) retryLog(key, msg string, err error) {
	w.mu.Lock()
	if w.limited == nil {
		w.limited = lograte.NewLogger(w.log, 10*time.Minute)
	}
	l := w.limited
	w.mu.Unlock()
	l.Warn(key, msg, "err", err)
}

// fetch returns the document in force: the agent's if it exists, else the
// group's; a zero FleetDoc when neither exists.
func (w *fleetWatcher) fetch(ctx context.Context, client *http.Client, base string, etags map[string]string, docs map[string]FleetDoc) (FleetDoc, error) {
	for _, key := range []string{"agent." + w.agentID, "group." + w.cfg.Group} {
		kind, name, _ := strings.Cut(key, ".")
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/"+kind+"/"+url.PathEscape(name)+".yaml", nil)
		if err != nil {
			return FleetDoc{}, err
		}
		if et := etags[key]; et != "" {
			req.Header.Set("If-None-Match", et)
		}
		resp, err := client.Do(req)
		if err != nil {
			return FleetDoc{}, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		resp.Body.Close()
		if err != nil {
			return FleetDoc{}, err
		}
		switch resp.StatusCode {
		case http.StatusNotModified:
			if d, ok := docs[key]; ok {
				return d, nil
			}
		case http.StatusOK:
			rev, _ := strconv.ParseUint(resp.Header.Get("X-Bgpedge-Revision"), 10, 64)
			d := newFleetDoc(key, rev, body)
			etags[key], docs[key] = resp.Header.Get("ETag"), d
			return d, nil
		case http.StatusNotFound:
			delete(etags, key)
			delete(docs, key)
			continue
		default:
			return FleetDoc{}, fmt.Errorf("fleet: GET %s: %s", req.URL, resp.Status)
		}
	}
	return FleetDoc{}, nil
}

package forwarder

import (
	"cmp"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/bgpedge/bgpedge/record"
)

// FileConfig configures the file sink: forwarder.file.
type FileConfig struct {
	// Dir holds one directory per stream (bmp.route.loc-rib/, bmp.raw/, …).
	Dir string `mapstructure:"dir"`
	// MaxFileBytes closes a stream's file once the next message would take it
	// past this size; the next message starts a new file.
	MaxFileBytes int64 `mapstructure:"max_file_bytes"`
	// MaxFileAge closes a stream's file this long after it was opened,
	// checked whenever the sink writes a batch (of any stream).
	MaxFileAge time.Duration `mapstructure:"max_file_age"`
	// MaxTotalBytes bounds every file of Dir together: the oldest closed
	// files are deleted to stay within it. Files still being written are
	// never deleted, so keep it well above (streams written + 1) ×
	// max_file_bytes.
	MaxTotalBytes int64 `mapstructure:"max_total_bytes"`
	// Gzip compresses closed files (name.gz), in the background.
	Gzip bool `mapstructure:"gzip"`
}

// DefaultFileConfig returns the defaults documented in configs/.
func DefaultFileConfig() FileConfig {
	return FileConfig{
		Dir:           "/var/lib/bgpedge/out",
		MaxFileBytes:  64 << 20,
		MaxFileAge:    time.Hour,
		MaxTotalBytes: 1 << 30,
	}
}

// minFileBytes keeps rotation from making a file per message.
const minFileBytes = 4 << 10

// validateFile checks forwarder.file; it runs when file is in the list.
func validateFile(c Config, bad badFunc) {
	f := c.File
	if f.Dir == "" {
		bad("file.dir", "is required when file is in forwarder.sinks")
	}
	if f.MaxFileBytes < minFileBytes {
		bad("file.max_file_bytes", "must be at least %d (4KiB)", minFileBytes)
	}
	if f.MaxFileAge <= 0 {
		bad("file.max_file_age", "must be positive")
	}
	if f.MaxTotalBytes < 2*f.MaxFileBytes {
		bad("file.max_total_bytes", "must be at least twice file.max_file_bytes (%d)", f.MaxFileBytes)
	}
}

// FileSink writes each stream into files of its own directory: JSON streams
// as JSON lines, bmp.raw as the plain BMP messages one after the other
// (`bgpedge replay --file` sends them again). A batch is acknowledged only
// once it is written and fsync'd, and a file's directory entry once the
// directory is fsync'd too; a batch that cannot be written entirely (a full
// disk) is cut back off its files and reported failed, so what the files
// hold is always whole messages.
//
// Files are named <counter>-<created, UTC>-<first seq>.<jsonl|bmp>[.gz]:
// the counter orders a stream's files, and since the forwarder writes in
// spool order and starts a new file with every session, a file holds the
// stream's messages of consecutive records from its first seq on.
type FileSink struct {
	cfg    FileConfig
	concat map[string]bool // streams written as concatenated BMP messages
	logger *slog.Logger
	m      *fileMetrics
	now    func() time.Time

	// Connect, Write and Close run on one goroutine: open and next are theirs.
	open      map[string]*openFile // stream → the file being written
	next      map[string]uint64    // stream → counter of its next file
	connected bool
	rotated   int64 // bytes of the current batch in files it rotated

	// mu guards what the compressor shares with the writer.
	mu      sync.Mutex
	closed  []*closedFile // oldest first
	total   int64         // bytes of every file under Dir
	queue   []*closedFile // waiting for compression
	wake    chan struct{}
	stopGz  context.CancelFunc
	gzDone  chan struct{}
	reclaim bool // over budget with nothing deletable: logged once
}

type openFile struct {
	stream, path string
	f            *os.File
	size         int64 // bytes in the file
	pending      []byte
	opened       time.Time
	raw          bool
	start        int64 // size before the current batch; -1 when untouched
}

type closedFile struct {
	path    string
	size    int64
	busy    bool // being compressed
	deleted bool
}

var (
	_ Sink     = (*FileSink)(nil)
	_ Prober   = (*FileSink)(nil)
	_ Timeouts = (*FileSink)(nil)
)

// Errors of the file sink.
var (
	// ErrFileFormat marks a file of the file sink that is not what its name says.
	ErrFileFormat = errors.New("not a file sink file")
)

// NewFileSink returns an unconnected file sink; reg takes its metrics.
func NewFileSink(cfg FileConfig, streams record.Streams, logger *slog.Logger, reg prometheus.Registerer) (*FileSink, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newFileMetrics(reg)
	if err != nil {
		return nil, err
	}
	// A raw BMP stream's messages carry their own length, so its file is
	// the plain concatenation bgpedge replay reads; every other stream is
	// one JSON document a line.
	concat := make(map[string]bool)
	for _, st := range streams {
		if st.Format == record.FormatRaw && st.Kind == record.KindBMP {
			concat[st.Name] = true
		}
	}
	return &FileSink{cfg: cfg, concat: concat, logger: logger, m: m, now: time.Now}, nil
}

// Name implements Sink.
func (s *FileSink) Name() string { return SinkFile }

// fileTimeout bounds Connect (a directory scan and the repair of the files
// a crash left) and Probe (a small write and fsync).
const fileTimeout = 30 * time.Second

// ConnectTimeout implements Timeouts.
func (s *FileSink) ConnectTimeout() time.Duration { return fileTimeout }

// ProbeTimeout implements Timeouts.
func (s *FileSink) ProbeTimeout() time.Duration { return fileTimeout }

// probeBytes is what a probe writes: a full disk fails it, a disk with a
// few blocks left does not make the forwarder come back only to fail again.
const probeBytes = 64 << 10

// Probe implements Prober: the directory takes a small file, fsync'd.
func (s *FileSink) Probe(ctx context.Context) error {
	if err := os.MkdirAll(s.cfg.Dir, 0o750); err != nil {
		return fmt.Errorf("file sink: %w: %w", ErrUnavailable, err)
	}
	f, err := os.CreateTemp(s.cfg.Dir, ".probe-*")
	if err != nil {
		return fmt.Errorf("file sink: %w: %w", ErrUnavailable, err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(make([]byte, probeBytes))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("file sink: %w: %w", ErrUnavailable, err)
	}
	return nil
}

// Connect implements Sink: it checks that the directory takes writes,
// completes what a crash left (a half-written last message is cut off, a
// half-done compression removed), and starts the compressor.
func (s *FileSink) Connect(ctx context.Context) error {
	if s.connected {
		return nil
	}
	if err := s.Probe(ctx); err != nil {
		s.m.errors.WithLabelValues(errReason(err)).Inc()
		return err
	}
	closed, next, err := s.scan()
	if err != nil {
		return fmt.Errorf("file sink: %w: %w", ErrUnavailable, err)
	}
	var total int64
	for _, c := range closed {
		total += c.size
	}
	gctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	s.closed, s.total, s.queue, s.reclaim = closed, total, nil, false
	if s.cfg.Gzip {
		for _, c := range closed {
			if filepath.Ext(c.path) != ".gz" {
				s.queue = append(s.queue, c)
			}
		}
	}
	s.wake, s.stopGz, s.gzDone = make(chan struct{}, 1), cancel, make(chan struct{})
	s.m.dirBytes.Set(float64(total))
	s.mu.Unlock()
	s.open, s.next, s.connected = map[string]*openFile{}, next, true
	go s.compressor(gctx, s.wake, s.gzDone)
	s.signal()
	s.enforce()
	return nil
}

// scan lists what Dir holds: every finished file, oldest first, and each
// stream's next counter; it repairs the last file of each stream.
func (s *FileSink) scan() ([]*closedFile, map[string]uint64, error) {
	entries, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return nil, nil, err
	}
	next := map[string]uint64{}
	type named struct {
		c       *closedFile
		name    fileName
		modTime time.Time
	}
	var all []named
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		stream := e.Name()
		files, err := listStreamFiles(filepath.Join(s.cfg.Dir, stream), true)
		if err != nil {
			return nil, nil, err
		}
		if len(files) == 0 {
			continue
		}
		last := files[len(files)-1]
		if !last.gz {
			if err := repairTail(last.path, last.raw); err != nil {
				return nil, nil, fmt.Errorf("repair %s: %w", last.path, err)
			}
		}
		next[stream] = last.counter + 1
		for _, f := range files {
			st, err := os.Stat(f.path)
			if err != nil {
				return nil, nil, err
			}
			if st.Size() == 0 && !f.gz {
				_ = os.Remove(f.path) // a file cut back to nothing
				continue
			}
			all = append(all, named{&closedFile{path: f.path, size: st.Size()}, f, st.ModTime()})
		}
	}
	// Oldest first across streams: by creation time, then counter.
	slices.SortStableFunc(all, func(a, b named) int {
		if c := a.name.created.Compare(b.name.created); c != 0 {
			return c
		}
		return cmp.Compare(a.name.counter, b.name.counter)
	})
	out := make([]*closedFile, len(all))
	for i, n := range all {
		out[i] = n.c
	}
	return out, next, nil
}

// Write implements Sink: the batch is appended to its streams' files and
// fsync'd before any of it is acknowledged; on an error every file it
// touched is cut back to where the batch began and the whole batch fails.
func (s *FileSink) Write(ctx context.Context, batch []*Outgoing, ack AckFunc) error {
	if !s.connected {
		for _, m := range batch {
			ack(m, ErrNotConnected)
		}
		return ErrNotConnected
	}
	var touched []*openFile
	err := s.rotateAged()
	if err == nil {
		err = s.writeBatch(batch, &touched)
	}
	if err == nil {
		err = s.flush(touched)
	}
	if err != nil {
		s.rotated = 0
		s.undo(touched)
		s.m.errors.WithLabelValues(errReason(err)).Inc()
		err = fmt.Errorf("file sink: %w: %w", ErrUnavailable, err)
		for _, m := range batch {
			ack(m, err)
		}
		return err
	}
	n := s.rotated
	s.rotated = 0
	for _, of := range touched {
		n += of.size - of.start
		of.start = -1
	}
	s.m.written.Add(float64(n))
	for _, m := range batch {
		ack(m, nil)
	}
	s.enforce()
	return nil
}

// pendingFlush is how much a file buffers within a batch before writing.
const pendingFlush = 1 << 20

func (s *FileSink) writeBatch(batch []*Outgoing, touched *[]*openFile) error {
	for _, m := range batch {
		raw := s.concat[m.Stream]
		var err error
		of := s.open[m.Stream]
		n := fileRecordSize(m, raw)
		if of != nil && of.size+int64(len(of.pending))+int64(n) > s.cfg.MaxFileBytes && of.size+int64(len(of.pending)) > 0 {
			if err := s.rotate(m.Stream, "size", touched); err != nil {
				return err
			}
			of = nil
		}
		if of == nil {
			if of, err = s.create(m.Stream, m.Seq, raw); err != nil {
				return err
			}
		}
		if of.start < 0 {
			of.start = of.size
			*touched = append(*touched, of)
		}
		of.pending = appendFileRecord(of.pending, m, raw)
		if len(of.pending) >= pendingFlush {
			if err := s.writePending(of); err != nil {
				return err
			}
		}
	}
	return nil
}

// writePending appends what of buffered to its file.
func (s *FileSink) writePending(of *openFile) error {
	if len(of.pending) == 0 {
		return nil
	}
	n, err := of.f.Write(of.pending)
	of.size += int64(n)
	s.addTotal(int64(n))
	of.pending = of.pending[:0]
	return err // an *os.PathError: it names the file
}

// flush writes what the batch left buffered and fsyncs every file it touched.
func (s *FileSink) flush(touched []*openFile) error {
	for _, of := range touched {
		if err := s.writePending(of); err != nil {
			return err
		}
		if err := of.f.Sync(); err != nil {
			return err
		}
	}
	return nil
}

// undo cuts every file the failed batch touched back to where the batch
// began; a file the batch created is removed.
func (s *FileSink) undo(touched []*openFile) {
	for _, of := range touched {
		of.pending = of.pending[:0]
		if of.start == 0 {
			_ = of.f.Close()
			_ = os.Remove(of.path)
			s.addTotal(-of.size)
			delete(s.open, of.stream)
			continue
		}
		if err := of.f.Truncate(of.start); err != nil {
			// The process crashing is what is left: the next Connect cuts
			// a partial message off; whole ones are duplicates at worst.
			s.logger.Warn("file sink: cannot cut a failed batch off", "file", of.path, "err", err)
			_ = of.f.Close()
			delete(s.open, of.stream)
			continue
		}
		_ = of.f.Sync()
		s.addTotal(of.start - of.size)
		of.size, of.start = of.start, -1
	}
}

// create opens a new file for stream, first seq seq, and fsyncs its
// directory so the file survives a crash once its data is fsync'd.
func (s *FileSink) create(stream string, seq uint64, raw bool) (*openFile, error) {
	dir := filepath.Join(s.cfg.Dir, streamDir(stream))
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.Mkdir(dir, 0o750); err != nil {
			return nil, fmt.Errorf("file sink dir: %w", err)
		}
		if err := syncDir(s.cfg.Dir); err != nil {
			return nil, err
		}
	}
	now := s.now()
	name := fileName{counter: s.next[stream], created: now, firstSeq: seq, raw: raw}
	path := filepath.Join(dir, name.String())
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	if err := syncDir(dir); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return nil, err
	}
	s.next[stream]++
	of := &openFile{stream: stream, path: path, f: f, opened: now, raw: raw, start: -1}
	s.open[stream] = of
	return of, nil
}

// rotateAged closes the files opened longer than max_file_age ago.
func (s *FileSink) rotateAged() error {
	now := s.now()
	for stream, of := range s.open {
		if now.Sub(of.opened) >= s.cfg.MaxFileAge {
			if err := s.rotate(stream, "age", nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// rotate closes stream's file: its data fsync'd, it becomes a closed file
// (deletable, compressible). A part of the current batch in it is durable
// from here on even if the batch fails later: a duplicate, never a loss.
func (s *FileSink) rotate(stream, reason string, touched *[]*openFile) error {
	of := s.open[stream]
	if err := s.writePending(of); err != nil {
		return err
	}
	if err := of.f.Sync(); err != nil {
		return err
	}
	if err := of.f.Close(); err != nil {
		return err
	}
	delete(s.open, stream)
	if of.start >= 0 {
		s.rotated += of.size - of.start
	}
	if touched != nil {
		*touched = slices.DeleteFunc(*touched, func(t *openFile) bool { return t == of })
	}
	if reason != "" {
		s.m.rotations.WithLabelValues(reason).Inc()
	}
	s.retire(of)
	return nil
}

// retire makes a closed file known to retention and the compressor.
func (s *FileSink) retire(of *openFile) {
	if of.size == 0 {
		_ = os.Remove(of.path)
		return
	}
	c := &closedFile{path: of.path, size: of.size}
	s.mu.Lock()
	s.closed = append(s.closed, c)
	if s.cfg.Gzip {
		s.queue = append(s.queue, c)
	}
	s.mu.Unlock()
	s.signal()
}

func (s *FileSink) addTotal(n int64) {
	s.mu.Lock()
	s.total += n
	s.m.dirBytes.Set(float64(s.total))
	s.mu.Unlock()
}

// enforce deletes the oldest closed files while the directory is over
// max_total_bytes.
func (s *FileSink) enforce() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.total > s.cfg.MaxTotalBytes {
		// Oldest first, always: deleting a newer file instead would leave a
		// hole in the middle of a stream. A file being compressed is deleted
		// too; the compressor then removes what it made of it.
		i := 0
		if len(s.closed) == 0 {
			if !s.reclaim {
				s.reclaim = true
				s.logger.Warn("file sink over forwarder.file.max_total_bytes with no closed file to delete: raise it or lower max_file_bytes",
					"bytes", s.total, "max_total_bytes", s.cfg.MaxTotalBytes)
			}
			break
		}
		c := s.closed[i]
		if err := os.Remove(c.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.logger.Warn("file sink: retention cannot delete a file", "file", c.path, "err", err)
			s.m.errors.WithLabelValues("io").Inc()
			break
		}
		c.deleted = true
		s.closed = slices.Delete(s.closed, i, i+1)
		s.total -= c.size
		s.m.deleted.Inc()
	}
	if s.total <= s.cfg.MaxTotalBytes {
		s.reclaim = false
	}
	s.m.dirBytes.Set(float64(s.total))
}

func (s *FileSink) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// compressor gzips closed files one at a time until ctx ends. Its channels
// are its own: one that outlived a Close cut short by its deadline does not
// read those of the next Connect's compressor.
func (s *FileSink) compressor(ctx context.Context, wake <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		s.mu.Lock()
		var c *closedFile
		for len(s.queue) > 0 && c == nil {
			c, s.queue = s.queue[0], s.queue[1:]
			if c.deleted {
				c = nil
			}
		}
		if c != nil {
			c.busy = true
		}
		s.mu.Unlock()
		if c == nil {
			select {
			case <-ctx.Done():
				return
			case <-wake:
				continue
			}
		}
		path, size, err := compressFile(ctx, c.path)
		s.mu.Lock()
		c.busy = false
		if c.deleted {
			// Retention took it while it was being compressed: what was
			// made of it goes too (also when removing the source failed
			// because retention had removed it first).
			_ = os.Remove(c.path + ".gz")
			s.mu.Unlock()
			continue
		}
		if err == nil {
			s.total += size - c.size
			c.path, c.size = path, size
			s.m.compressed.Inc()
		}
		s.mu.Unlock()
		if err != nil && ctx.Err() == nil {
			s.m.errors.WithLabelValues("compress").Inc()
			s.logger.Warn("file sink: cannot compress a closed file; it stays uncompressed", "file", c.path, "err", err)
		}
		s.enforce()
		if ctx.Err() != nil {
			return
		}
	}
}

// compressFile writes path.gz beside path, fsync'd, then removes path; it
// returns the new path and size.
func compressFile(ctx context.Context, path string) (string, int64, error) {
	src, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer src.Close()
	tmp := path + ".gz.tmp"
	dst, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return "", 0, err
	}
	fail := func(err error) (string, int64, error) {
		_ = dst.Close()
		_ = os.Remove(tmp)
		return "", 0, err
	}
	zw := gzip.NewWriter(dst)
	buf := make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, err := zw.Write(buf[:n]); err != nil {
				return fail(err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fail(rerr)
		}
	}
	if err := zw.Close(); err != nil {
		return fail(err)
	}
	if err := dst.Sync(); err != nil {
		return fail(err)
	}
	st, err := dst.Stat()
	if err != nil {
		return fail(err)
	}
	if err := dst.Close(); err != nil {
		_ = os.Remove(tmp)
		return "", 0, err
	}
	gz := path + ".gz"
	if err := os.Rename(tmp, gz); err != nil {
		_ = os.Remove(tmp)
		return "", 0, err
	}
	dir := filepath.Dir(path)
	if err := syncDir(dir); err != nil {
		return "", 0, err
	}
	if err := os.Remove(path); err != nil {
		return "", 0, err
	}
	return gz, st.Size(), syncDir(dir)
}

// Close implements Sink: every file is closed (everything written was
// fsync'd by Write) and the compressor stops, within ctx.
func (s *FileSink) Close(ctx context.Context) error {
	if !s.connected {
		return nil
	}
	s.connected = false
	var errs []error
	for stream := range s.open {
		if err := s.rotate(stream, "", nil); err != nil {
			errs = append(errs, err)
			if of := s.open[stream]; of != nil {
				_ = of.f.Close()
				delete(s.open, stream)
			}
		}
	}
	s.stopGz()
	select {
	case <-s.gzDone:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("file sink close: %w", ctx.Err()))
	}
	return errors.Join(errs...)
}

// errReason is the bounded reason label of a write error.
func errReason(err error) string {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return "no_space"
	}
	return "io"
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
}

type fileMetrics struct {
	written    prometheus.Counter
	rotations  *prometheus.CounterVec
	deleted    prometheus.Counter
	compressed prometheus.Counter
	errors     *prometheus.CounterVec
	dirBytes   prometheus.Gauge
}

func newFileMetrics(reg prometheus.Registerer) (*fileMetrics, error) {
	m := &fileMetrics{
		written: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_file_written_bytes_total",
			Help: "Bytes the file sink wrote and fsync'd (before compression).",
		}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_file_rotations_total",
			Help: "Files the file sink closed to start a new one, by reason (size, age).",
		}, []string{"reason"}),
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_file_deleted_files_total",
			Help: "Closed files the file sink deleted to stay within forwarder.file.max_total_bytes.",
		}),
		compressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_file_compressed_files_total",
			Help: "Closed files the file sink gzipped.",
		}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "bgpedge_forwarder_file_errors_total",
			Help: "File sink errors by reason: no_space (a full disk or quota), io (any other write error), compress.",
		}, []string{"reason"}),
		dirBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "bgpedge_forwarder_file_dir_bytes",
			Help: "Bytes of every file in forwarder.file.dir, as the file sink counts them.",
		}),
	}
	for _, r := range []string{"size", "age"} {
		m.rotations.WithLabelValues(r)
	}
	for _, r := range []string{"no_space", "io", "compress"} {
		m.errors.WithLabelValues(r)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.written, m.rotations, m.deleted, m.compressed, m.errors, m.dirBytes} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("file sink metrics: %w", err)
		}
	}
	return m, nil
}

package forwarder

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The file sink's format, shared by the sink and `bgpedge tail --file`.
//
// A JSON stream's file holds one JSON value per line: the event exactly as
// Kafka receives it as a message value (its "id" is the message id), or,
// for a value that is not a JSON object (a dead letter's raw record), an
// envelope {"id", "stream", "key", "headers", "value_base64"}. Kafka's
// message key and headers are not kept beside events: the event carries the
// id, router, peer and route itself.
//
// bmp.raw's files hold the BMP messages one after the other, without the
// OpenBMP envelope if the encoder adds one: `bgpedge replay --file` sends
// such a file again. The router a message came from is not kept.

const (
	extJSON = "jsonl"
	extBMP  = "bmp"
	extGzip = ".gz"
	extTmp  = ".tmp"
	// fileTimeLayout is the creation time in a file name (UTC).
	fileTimeLayout = "20060102T150405Z"
)

// fileName is the name of a file sink file:
// <counter>-<created>-<first seq>.<jsonl|bmp>[.gz].
type fileName struct {
	counter  uint64
	created  time.Time
	firstSeq uint64
	raw      bool
	gz       bool
	path     string // set by listStreamFiles
}

func (n fileName) String() string {
	ext := extJSON
	if n.raw {
		ext = extBMP
	}
	s := fmt.Sprintf("%012d-%s-%d.%s", n.counter, n.created.UTC().Format(fileTimeLayout), n.firstSeq, ext)
	if n.gz {
		s += extGzip
	}
	return s
}

// parseFileName reads a name made by fileName.String.
func parseFileName(name string) (fileName, error) {
	var n fileName
	parts := strings.SplitN(name, "-", 3)
	if len(parts) != 3 {
		return n, fmt.Errorf("%w: %s", ErrFileFormat, name)
	}
	seqStr, ext, ok := strings.Cut(parts[2], ".")
	if !ok {
		return n, fmt.Errorf("%w: %s", ErrFileFormat, name)
	}
	var err error
	if n.counter, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return n, fmt.Errorf("%w: %s", ErrFileFormat, name)
	}
	if n.created, err = time.Parse(fileTimeLayout, parts[1]); err != nil {
		return n, fmt.Errorf("%w: %s", ErrFileFormat, name)
	}
	if n.firstSeq, err = strconv.ParseUint(seqStr, 10, 64); err != nil {
		return n, fmt.Errorf("%w: %s", ErrFileFormat, name)
	}
	switch ext {
	case extJSON, extBMP:
	case extJSON + extGzip, extBMP + extGzip:
		n.gz = true
	default:
		return n, fmt.Errorf("%w: %s", ErrFileFormat, name)
	}
	n.raw = strings.HasPrefix(ext, extBMP)
	return n, nil
}

// streamDir is the directory name of a stream under forwarder.file.dir.
func streamDir(stream string) string {
	s := strings.NewReplacer("/", "_", "\\", "_").Replace(stream)
	if s == "" || s == "." || s == ".." {
		s = "_" + s
	}
	return s
}

// listStreamFiles lists a stream directory's files in counter order; of a
// file both compressed and not (a compression cut short by a crash after
// its rename) the compressed one. With cleanup, such leftovers and
// unfinished compressions are removed.
func listStreamFiles(dir string, cleanup bool) ([]fileName, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	byCounter := map[uint64]fileName{}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		name := e.Name()
		path := filepath.Join(dir, name)
		if strings.HasSuffix(name, extTmp) {
			if cleanup {
				_ = os.Remove(path)
			}
			continue
		}
		n, err := parseFileName(name)
		if err != nil {
			continue // not ours
		}
		n.path = path
		if prev, ok := byCounter[n.counter]; ok {
			keep, drop := prev, n
			if n.gz {
				keep, drop = n, prev
			}
			if cleanup && !drop.gz {
				_ = os.Remove(drop.path)
			}
			n = keep
		}
		byCounter[n.counter] = n
	}
	out := make([]fileName, 0, len(byCounter))
	for _, n := range byCounter {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b fileName) int {
		switch {
		case a.counter < b.counter:
			return -1
		case a.counter > b.counter:
			return 1
		}
		return 0
	})
	return out, nil
}

// fileEnvelope is the line of a value that is not a JSON object.
type fileEnvelope struct {
	ID      string            `json:"id"`
	Stream  string            `json:"stream"`
	Key     []byte            `json:"key,omitempty"`
	Headers map[string]string `json:"headers,omitempty"`
	Value   []byte            `json:"value_base64"`
}

// isJSONObject is a cheap check for an encoder's JSON event.
func isJSONObject(v []byte) bool {
	return len(v) >= 2 && v[0] == '{' && v[len(v)-1] == '}'
}

// fileRecordSize estimates what appendFileRecord adds, for rotation.
func fileRecordSize(m *Outgoing, raw bool) int {
	switch {
	case raw:
		return len(m.Value)
	case isJSONObject(m.Value):
		return len(m.Value) + 1
	}
	return 4*(len(m.Value)+len(m.Key))/3 + 256
}

// appendFileRecord appends m as its stream's files hold it.
func appendFileRecord(b []byte, m *Outgoing, raw bool) []byte {
	v := m.Value
	if raw {
		return append(b, stripOpenBMP(v)...)
	}
	if isJSONObject(v) {
		if bytes.IndexByte(v, '\n') < 0 {
			b = append(b, v...)
			return append(b, '\n')
		}
		var c bytes.Buffer
		if json.Compact(&c, v) == nil {
			b = append(b, c.Bytes()...)
			return append(b, '\n')
		}
	}
	env := fileEnvelope{ID: m.ID, Stream: m.Stream, Key: m.Key, Value: v, Headers: map[string]string{}}
	for i := range m.headerCount() {
		h := m.header(i)
		env.Headers[h.Key] = h.Value
	}
	line, err := json.Marshal(env)
	if err != nil { // only strings and bytes: cannot happen
		line = []byte(`{"id":` + strconv.Quote(m.ID) + `}`)
	}
	b = append(b, line...)
	return append(b, '\n')
}

// stripOpenBMP returns the BMP message of an OpenBMP raw envelope, or v.
func stripOpenBMP(v []byte) []byte {
	if len(v) >= 8 && string(v[:4]) == "OBMP" {
		if h := int(binary.BigEndian.Uint16(v[6:8])); h < len(v) {
			return v[h:]
		}
	}
	return v
}

// bmpHeaderLen is a BMP common header: version, length, type.
const bmpHeaderLen = 6

// repairTail cuts a partial last record (a process killed within a write)
// off an uncompressed file.
func repairTail(path string, raw bool) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	var good int64
	if raw {
		good, err = wholeBMP(f)
	} else {
		good, err = wholeLines(f, st.Size())
	}
	if err != nil {
		return err
	}
	if good == st.Size() {
		return nil
	}
	if err := f.Truncate(good); err != nil {
		return err
	}
	return f.Sync()
}

// wholeLines is the length of f's prefix that ends with a newline.
func wholeLines(f *os.File, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	end := size
	for end > 0 {
		n := min(int64(len(buf)), end)
		if _, err := f.ReadAt(buf[:n], end-n); err != nil {
			return 0, err
		}
		if i := bytes.LastIndexByte(buf[:n], '\n'); i >= 0 {
			return end - n + int64(i) + 1, nil
		}
		end -= n
	}
	return 0, nil
}

// wholeBMP is the length of r's prefix made of whole BMP messages.
func wholeBMP(r io.Reader) (int64, error) {
	br := bufio.NewReaderSize(r, 256<<10)
	var off int64
	var hdr [bmpHeaderLen]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return off, nil
			}
			return 0, err
		}
		l := int64(binary.BigEndian.Uint32(hdr[1:5]))
		if l < bmpHeaderLen {
			return off, nil // not a message: what follows is cut off
		}
		if _, err := br.Discard(int(l - bmpHeaderLen)); err != nil {
			if errors.Is(err, io.EOF) {
				return off, nil
			}
			return 0, err
		}
		off += l
	}
}

// nextRecord splits the first whole record off b: a line (without its
// newline) or a BMP message; ok is false when b holds no whole record.
func nextRecord(b []byte, raw bool) (rec []byte, n int, ok bool) {
	if !raw {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return nil, 0, false
		}
		return b[:i], i + 1, true
	}
	if len(b) < bmpHeaderLen {
		return nil, 0, false
	}
	l := int(binary.BigEndian.Uint32(b[1:5]))
	if l < bmpHeaderLen {
		l = len(b) // not BMP: hand the rest over as one value
	}
	if len(b) < l {
		return nil, 0, false
	}
	return b[:l], l, true
}

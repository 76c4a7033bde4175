package forwarder

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// tailPoll is how often a followed stream directory is checked for more.
const tailPoll = 200 * time.Millisecond

// tailFile prints a stream's files from the oldest, compressed or not; with
// Follow it then waits for more, across rotations.
func tailFile(ctx context.Context, o TailOptions, p *tailPrinter) error {
	dir := filepath.Join(o.File, streamDir(o.Stream))
	if _, err := os.Stat(o.File); err != nil {
		return fmt.Errorf("tail: %w", err)
	}
	done := -1 // counter of the last file read
	for ctx.Err() == nil {
		files, err := listStreamFiles(dir, false)
		if err != nil {
			return fmt.Errorf("tail: %w", err)
		}
		var next *fileName
		for i := range files {
			if int64(files[i].counter) > int64(done) {
				next = &files[i]
				break
			}
		}
		if next == nil {
			if !o.Follow {
				return nil
			}
			if !sleepCtx(ctx, tailPoll) {
				return nil
			}
			continue
		}
		if err := tailOneFile(ctx, o, p, dir, *next); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // compressed or deleted meanwhile: list again
			}
			return err
		}
		done = int(next.counter)
	}
	return nil
}

// tailOneFile prints one file. The newest uncompressed file may still be
// written: with Follow it is read until a later file exists, and then to
// its end (the sink never writes a file again once it started the next).
func tailOneFile(ctx context.Context, o TailOptions, p *tailPrinter, dir string, n fileName) error {
	f, err := os.Open(n.path)
	if err != nil {
		return err
	}
	defer f.Close()
	rel := filepath.Join(filepath.Base(dir), filepath.Base(n.path))
	var r io.Reader = f
	if n.gz {
		zr, err := gzip.NewReader(f)
		if err != nil {
			return fmt.Errorf("tail %s: %w", n.path, err)
		}
		r = zr
	}
	var (
		buf  []byte
		off  int64 // offset in the (uncompressed) stream of buf[0]
		last bool  // a later file exists: read to the end, then move on
	)
	chunk := make([]byte, 256<<10)
	for {
		k, rerr := r.Read(chunk)
		buf = append(buf, chunk[:k]...)
		for {
			rec, used, ok := nextRecord(buf, n.raw)
			if !ok {
				break
			}
			if err := printFileRecord(p, rel, off, rec, n.raw); err != nil {
				return err
			}
			if ctx.Err() != nil {
				return nil
			}
			buf = buf[used:]
			off += int64(used)
		}
		if rerr == nil {
			continue
		}
		if !errors.Is(rerr, io.EOF) {
			return fmt.Errorf("tail %s: %w", n.path, rerr)
		}
		if n.gz || !o.Follow || last {
			return nil
		}
		// At the end of a file that may grow: move on once a later file
		// exists, after reading this one to its end once more.
		files, err := listStreamFiles(dir, false)
		if err != nil {
			return fmt.Errorf("tail: %w", err)
		}
		if len(files) > 0 && files[len(files)-1].counter > n.counter {
			last = true
			continue
		}
		if !sleepCtx(ctx, tailPoll) {
			return nil
		}
	}
}

// printFileRecord prints one line or BMP message of a file.
func printFileRecord(p *tailPrinter, file string, off int64, rec []byte, raw bool) error {
	tm := TailedMessage{File: file, FileOffset: &off}
	value := rec
	if !raw {
		var env struct {
			ID      string            `json:"id"`
			Stream  string            `json:"stream"`
			Key     []byte            `json:"key"`
			Headers map[string]string `json:"headers"`
			// Present in an envelope only; null for a tombstone.
			Value json.RawMessage `json:"value_base64"`
		}
		if err := json.Unmarshal(rec, &env); err == nil {
			tm.ID = env.ID
			if env.Value != nil {
				var v []byte // nil for null
				if err := json.Unmarshal(env.Value, &v); err == nil {
					value, tm.Key, tm.Headers = v, string(env.Key), env.Headers
				}
			}
		}
	}
	return p.print(tm, value)
}

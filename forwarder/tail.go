package forwarder

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/IBM/sarama"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/bgpedge/bgpedge/record"
)

// TailOptions configures Tail: Kafka (Brokers, Topic), NATS (URL, Subject)
// or the file sink's directory (File, Stream).
type TailOptions struct {
	Kafka KafkaConfig // brokers, version, TLS and SASL; used when Topic is set
	Topic string
	NATS  NATSConfig // url and auth; used when Subject is set
	// Subject may contain wildcards; the JetStream stream holding it is found
	// by subject.
	Subject string
	// File is forwarder.file.dir of a file sink, Stream the stream to read
	// there. Files are read from the oldest; Follow then waits for more.
	File          string
	Stream        string
	Follow        bool
	JSON          bool // one JSON object per line instead of the human form
	FromBeginning bool
	// Limit stops after this many messages (0: until ctx is done).
	Limit int
	Out   io.Writer
}

// TailedMessage is one consumed message, as printed with --json.
type TailedMessage struct {
	Topic     string  `json:"topic,omitempty"`
	Partition *int32  `json:"partition,omitempty"`
	Offset    *int64  `json:"offset,omitempty"`
	Subject   string  `json:"subject,omitempty"`
	StreamSeq *uint64 `json:"stream_seq,omitempty"`
	File      string  `json:"file,omitempty"`
	// FileOffset is where the message starts in File (uncompressed).
	FileOffset *int64            `json:"file_offset,omitempty"`
	ID         string            `json:"id,omitempty"`
	Key        string            `json:"key,omitempty"`
	Headers    map[string]string `json:"headers,omitempty"`
	Summary    string            `json:"summary"`
	// Event is the value when it is JSON; raw values are summarised only.
	Event json.RawMessage `json:"event,omitempty"`
	Bytes int             `json:"bytes"`
}

// ErrTailTarget is returned unless exactly one of Topic, Subject and File is set.
var ErrTailTarget = errors.New("tail needs one of a kafka topic, a nats subject, or a file sink directory and stream")

// Tail prints messages one per line until ctx is done or Limit is reached
// (a file sink directory without Follow: until its files are read).
func Tail(ctx context.Context, o TailOptions) error {
	targets := 0
	for _, t := range []string{o.Topic, o.Subject, o.File} {
		if t != "" {
			targets++
		}
	}
	if targets != 1 || (o.File != "") != (o.Stream != "") {
		return ErrTailTarget
	}
	p := &tailPrinter{out: o.Out, json: o.JSON, limit: o.Limit}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p.done = cancel
	switch {
	case o.Topic != "":
		return tailKafka(ctx, o, p)
	case o.File != "":
		return tailFile(ctx, o, p)
	}
	return tailNATS(ctx, o, p)
}

type tailPrinter struct {
	mu    sync.Mutex
	out   io.Writer
	json  bool
	limit int
	n     int
	done  func()
}

func (p *tailPrinter) print(m TailedMessage, value []byte) error {
	m.Bytes = len(value)
	m.Summary = Summarize(value, m.Headers[HeaderRouter])
	if json.Valid(value) && len(value) > 0 && value[0] == '{' {
		m.Event = value
	}
	var line string
	if p.json {
		b, err := json.Marshal(m)
		if err != nil {
			return fmt.Errorf("tail: %w", err)
		}
		line = string(b)
	} else {
		var where string
		switch {
		case m.Topic != "":
			where = fmt.Sprintf("%s[%d]@%d", m.Topic, *m.Partition, *m.Offset)
		case m.File != "":
			where = fmt.Sprintf("%s@%d", m.File, *m.FileOffset)
		default:
			where = fmt.Sprintf("%s#%d", m.Subject, *m.StreamSeq)
		}
		id := m.ID
		if id == "" {
			id = "-" // raw BMP in a file: no id is kept
		}
		line = where + " " + id + " " + m.Summary
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.limit > 0 && p.n >= p.limit {
		return nil
	}
	if _, err := fmt.Fprintln(p.out, line); err != nil {
		return fmt.Errorf("tail: %w", err)
	}
	p.n++
	if p.limit > 0 && p.n >= p.limit {
		p.done()
	}
	return nil
}

var bmpTypes = []string{"route-monitoring", "statistics", "peer-down", "peer-up", "initiation", "termination", "route-mirroring"}

// Summarize describes a message value in one line: for a JSON event its
// type, router, peer and route; for raw BMP its type, router and length.
func Summarize(value []byte, router string) string {
	if value == nil {
		return "tombstone" // a compacted stream's withdrawn key (bmp.rib)
	}
	if len(value) > 0 && value[0] == '{' {
		var ev record.Event
		if err := json.Unmarshal(value, &ev); err == nil && ev.Type != "" {
			var b strings.Builder
			fmt.Fprintf(&b, "%s %s", ev.Source, ev.Type)
			if ev.Router != "" {
				fmt.Fprintf(&b, " router=%s", ev.Router)
			}
			if ev.Peer != nil {
				fmt.Fprintf(&b, " peer=%s as=%d", ev.Peer.Address, ev.Peer.AS)
			}
			if r := ev.Route; r != nil {
				fmt.Fprintf(&b, " %s %s %s", r.Action, r.Family, r.Prefix)
				if r.EndOfRIB {
					b.WriteString(" end-of-rib")
				}
				if r.NextHop != "" {
					fmt.Fprintf(&b, " nh=%s", r.NextHop)
				}
			}
			return b.String()
		}
		return fmt.Sprintf("json %d bytes", len(value))
	}
	// OpenBMP binary envelope: magic "OBMP", then the header; the BMP message follows.
	if len(value) >= 10 && string(value[:4]) == "OBMP" {
		hlen := int(binary.BigEndian.Uint16(value[6:8]))
		if hlen < len(value) {
			return "openbmp " + Summarize(value[hlen:], router)
		}
	}
	if len(value) >= 6 && (value[0] == 3 || value[0] == 4) && int(binary.BigEndian.Uint32(value[1:5])) == len(value) {
		t := fmt.Sprintf("type-%d", value[5])
		if int(value[5]) < len(bmpTypes) {
			t = bmpTypes[value[5]]
		}
		if router == "" {
			router = "?"
		}
		return fmt.Sprintf("bmp %s router=%s len=%d", t, router, len(value))
	}
	return fmt.Sprintf("%d bytes", len(value))
}

func tailKafka(ctx context.Context, o TailOptions, p *tailPrinter) error {
	sc, err := SaramaConfig(o.Kafka)
	if err != nil {
		return err
	}
	sc.Consumer.Return.Errors = true
	client, err := newClient(ctx, o.Kafka.Brokers, sc)
	if err != nil {
		return err
	}
	defer client.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return fmt.Errorf("kafka consumer: %w", err)
	}
	defer consumer.Close()
	parts, err := consumer.Partitions(o.Topic)
	if err != nil {
		return fmt.Errorf("partitions of %s: %w", o.Topic, err)
	}
	start := sarama.OffsetNewest
	if o.FromBeginning {
		start = sarama.OffsetOldest
	}
	errs := make(chan error, len(parts))
	// One partition failing ends the whole tail, with its error.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, part := range parts {
		pc, err := consumer.ConsumePartition(o.Topic, part, start)
		if err != nil {
			return fmt.Errorf("consume %s/%d: %w", o.Topic, part, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer pc.AsyncClose()
			for {
				select {
				case <-ctx.Done():
					return
				case e := <-pc.Errors():
					if e != nil {
						errs <- e
						cancel()
						return
					}
				case m := <-pc.Messages():
					tm := TailedMessage{Topic: m.Topic, Partition: &m.Partition, Offset: &m.Offset, Key: string(m.Key), Headers: map[string]string{}}
					for _, h := range m.Headers {
						tm.Headers[string(h.Key)] = string(h.Value)
					}
					tm.ID = tm.Headers[HeaderID]
					if err := p.print(tm, m.Value); err != nil {
						errs <- err
						cancel()
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

func tailNATS(ctx context.Context, o TailOptions, p *tailPrinter) error {
	opts, err := NATSOptions(o.NATS, "bgpedge-tail")
	if err != nil {
		return err
	}
	nc, err := nats.Connect(o.NATS.URL, opts...)
	if err != nil {
		return fmt.Errorf("nats connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	stream, err := js.StreamNameBySubject(ctx, o.Subject)
	if err != nil {
		return fmt.Errorf("no jetstream stream holds %s: %w", o.Subject, err)
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{o.Subject}, DeliverPolicy: jetstream.DeliverNewPolicy}
	if o.FromBeginning {
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	cons, err := js.OrderedConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("jetstream consumer on %s: %w", stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("jetstream consume: %w", err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("jetstream next: %w", err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("jetstream metadata: %w", err)
		}
		seq := meta.Sequence.Stream
		tm := TailedMessage{Subject: msg.Subject(), StreamSeq: &seq, Headers: map[string]string{}}
		for k, v := range msg.Headers() {
			if len(v) > 0 {
				tm.Headers[k] = v[0]
			}
		}
		tm.ID = tm.Headers[HeaderID]
		if k, err := base64.StdEncoding.DecodeString(tm.Headers[HeaderKey]); err == nil {
			tm.Key = string(bytes.ToValidUTF8(k, []byte("?")))
		}
		data := msg.Data()
		if tm.Headers[HeaderTombstone] != "" {
			data = nil // a tombstone, as on Kafka (bridge.go)
		}
		if err := p.print(tm, data); err != nil {
			return err
		}
	}
}

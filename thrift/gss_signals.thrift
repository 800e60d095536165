// Thrift twins of the signal value messages in proto/gss/v1/signals.proto, for the daily
// snapshot export (docs/export.md). tests/unit/test_snapshot_thrift_twins.py fails when a proto
// field has no twin here, so keep the two in step: same field names, same field ids.
//
// Type mapping (proto3 -> Thrift):
//   float, double          -> double            (Thrift has no 32-bit float; widening is exact)
//   int32                  -> i32
//   uint32, int64          -> i64               (every uint32 fits; no sign surprises)
//   fixed64, uint64        -> i64               (same 64 bits, two's complement: values >= 2^63
//                                                read as negative; the bit pattern is exact)
//   string                 -> string, bytes -> binary, bool -> bool
//   google.protobuf.Timestamp -> optional i64   microseconds since the Unix epoch, UTC
//                                                (unset in proto -> unset in Thrift)
//   repeated T             -> list<T>
//   message                -> struct (optional; list elements are always set)
// proto3 scalars always have a value (their zero by default), so they are `required` here.
//
// Encoding: the snapshot's `value_thrift` column holds one value struct serialized with the
// Thrift *binary* protocol (TBinaryProtocol, strict: big-endian, no message envelope).
//
// The <Type>SnapshotRow structs describe one row of a snapshot Parquet file: their Thrift
// descriptor is written to the `thrift.descriptor` footer key (parquet-thrift convention) and
// `thrift.class` names them with the Java namespace below.

namespace java gss.thrift.v1
namespace py gss_signals

// images/embedding@1: an L2-normalised image embedding.
struct Embedding {
  1: required list<double> values
}

// One colour of an image's palette, with the fraction of pixels nearest to it.
struct WeightedColor {
  1: required i64 red
  2: required i64 green
  3: required i64 blue
  4: required double weight
}

// images/dominant_colors@1: up to five colours, heaviest first.
struct DominantColors {
  1: required list<WeightedColor> colors
}

// images/dhash@1: a 64-bit difference hash (proto fixed64, two's complement here).
struct DHash {
  1: required i64 hash
}

// images/near_duplicate_of@1: the earliest-seen image whose dhash is within max_distance bits.
struct NearDuplicate {
  1: required string canonical_entity_id
  2: required i64 hamming_distance
}

// A classifier's score for one label, in [0, 1].
struct SafetyScore {
  1: required double score
  2: required string label
  3: required string model_version
}

// One line of text read in an image: its box in the image's pixels (x0, y0 inclusive; x1, y1
// exclusive) and the recogniser's confidence (mean per-character probability, in [0, 1]).
struct TextLine {
  1: required string text
  2: required i64 x0
  3: required i64 y0
  4: required i64 x1
  5: required i64 y1
  6: required double confidence
}

// images/ocr_text@1: the lines of text in an image, top to bottom, then left to right.
struct OcrText {
  1: required list<TextLine> lines
}

// pins/save_count_1h@1 and other windowed counts: events in [window_start, window_end).
struct WindowedCount {
  1: required i64 count
  // Microseconds since the Unix epoch, UTC.
  2: optional i64 window_start
  3: optional i64 window_end
}

// Rows of the snapshot tables: the envelope, the value as columns, and the value as bytes.
// Times are microseconds since the Unix epoch, UTC (Parquet: TIMESTAMP(MICROS, UTC)).
// `expired`: the value was older than its signal's TTL (by event time) at snapshot time.

struct EmbeddingSnapshotRow {
  1: required string entity_id
  2: required i64 event_time
  3: required i64 write_time
  4: required string producer
  5: required string model_name
  6: required string model_version
  7: required bool expired
  8: required Embedding value
  9: required binary value_thrift
}

struct DominantColorsSnapshotRow {
  1: required string entity_id
  2: required i64 event_time
  3: required i64 write_time
  4: required string producer
  5: required string model_name
  6: required string model_version
  7: required bool expired
  8: required DominantColors value
  9: required binary value_thrift
}

struct DHashSnapshotRow {
  1: required string entity_id
  2: required i64 event_time
  3: required i64 write_time
  4: required string producer
  5: required string model_name
  6: required string model_version
  7: required bool expired
  8: required DHash value
  9: required binary value_thrift
}

struct NearDuplicateSnapshotRow {
  1: required string entity_id
  2: required i64 event_time
  3: required i64 write_time
  4: required string producer
  5: required string model_name
  6: required string model_version
  7: required bool expired
  8: required NearDuplicate value
  9: required binary value_thrift
}

struct SafetyScoreSnapshotRow {
  1: required string entity_id
  2: required i64 event_time
  3: required i64 write_time
  4: required string producer
  5: required string model_name
  6: required string model_version
  7: required bool expired
  8: required SafetyScore value
  9: required binary value_thrift
}

struct OcrTextSnapshotRow {
  1: required string entity_id
  2: required i64 event_time
  3: required i64 write_time
  4: required string producer
  5: required string model_name
  6: required string model_version
  7: required bool expired
  8: required OcrText value
  9: required binary value_thrift
}

struct WindowedCountSnapshotRow {
  1: required string entity_id
  2: required i64 event_time
  3: required i64 write_time
  4: required string producer
  5: required string model_name
  6: required string model_version
  7: required bool expired
  8: required WindowedCount value
  9: required binary value_thrift
}

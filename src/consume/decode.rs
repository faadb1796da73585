//! Decoding a fetched batch: Kafka records (JSON values) straight into Arrow columns of the output
//! schema, enriched with one columnar lookup, plus the dead letters and, per record, what the core
//! needs to route it ([`RecordMeta`]). Pure: no I/O; the wall clock is an argument.
//!
//! Each value is parsed once into per-field slots (strings borrowed from the message): by the
//! [`flat_json`](super::flat_json) scan when it is a flat object without escapes (what our
//! producer writes), otherwise by `serde_json` through a `DeserializeSeed`, which then also gives
//! every error its message. The two agree on every message the scan answers (tested here on the
//! output schema's fields, and in `flat_json` against `serde_json::Value`). A record is typed and checked
//! completely before anything is appended to the column builders, so a bad record never leaves a
//! builder half-written. There is no `serde_json::Value` and no per-record map.
//!
//! A record becomes a dead letter (raw key and value kept, with the reason) when it is not JSON,
//! not an object, has trailing data, misses a required field or has one of the wrong type, has a
//! null value, a null event time, an event time more than `--max-future` ahead of the wall clock
//! (so one bad clock cannot move the watermark and turn every later record late), or, with
//! `--on-miss dead-letter`, a key that is not in the enrichment table.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Array,
    Int64Array, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder, UInt32Array,
};
use arrow::datatypes::SchemaRef;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;

use super::core::{RecordKind, RecordMeta};
use super::flat_json::{self, FieldKey, FlatValue, KeyOrder};
use crate::enrich::{Found, Join, Lookup, OnMiss};
use crate::output::parquet::{dead_letter_schema, OutputSchema};
use crate::schema::{self, FieldType, Schema};
use crate::window::{window_end, window_start};

/// How records are decoded and classified.
#[derive(Debug, Clone)]
pub struct DecodeConfig {
    pub schema: Arc<Schema>,
    /// Index of the event-time field; `None`: the Kafka timestamp.
    pub event_time_field: Option<usize>,
    /// Index of the field joined with the enrichment key.
    pub join_field: usize,
    pub on_miss: OnMiss,
    /// Event times further than this ahead of the wall clock are refused (`None`: no limit).
    pub max_future_ms: Option<i64>,
    pub window_ms: i64,
}

/// One fetched Kafka record.
#[derive(Debug, Clone)]
pub struct RawRecord<'a> {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Refused before decoding, for this reason: a record batch that cannot be read, whose
    /// bytes this record holds (`--on-corrupt-batch skip`). It goes to the dead letters.
    pub refused: Option<String>,
}

/// A decoded batch: table rows, dead letters and one [`RecordMeta`] per record.
#[derive(Debug, Clone)]
pub struct DecodedBatch {
    pub partition: i32,
    /// Output-schema rows (decoded and enriched), in offset order.
    pub rows: RecordBatch,
    /// Dead-letter rows, in offset order.
    pub dead: RecordBatch,
    pub metas: Vec<RecordMeta>,
    pub enrich_hits: u64,
    pub enrich_misses: u64,
    /// Misses because the dimension could not be asked (partial mode; counted in
    /// `enrich_misses` too).
    pub enrich_unreachable: u64,
    /// Partial mode: records whose key the lookup did not hold ([`Join::Pending`]), and those
    /// keys, distinct. When there are any, the batch is decoded again once they are asked for.
    pub enrich_pending: u64,
    pub pending_keys: Vec<String>,
}

impl DecodedBatch {
    /// The reasons of the dead letters, in order.
    pub fn dead_letter_errors(&self) -> Vec<String> {
        use arrow::array::AsArray;
        let errors = self.dead.column(5).as_string::<i32>();
        (0..errors.len())
            .map(|i| errors.value(i).to_string())
            .collect()
    }
}

/// Errors of decoding that are not the record's fault.
#[derive(Debug, thiserror::Error)]
#[error("building the Arrow columns of partition {partition} failed: {message}; this is a bug, please report it")]
pub struct DecodeError {
    partition: i32,
    message: String,
}

/// Decodes batches for one output schema. Cheap to share across partitions.
#[derive(Debug)]
pub struct Decoder {
    config: DecodeConfig,
    output: SchemaRef,
    dead_schema: SchemaRef,
    names: HashMap<Box<str>, usize>,
    key_order: KeyOrder,
    enrich_source: String,
}

impl Decoder {
    /// `enrich_source` names the enrichment table in dead-letter reasons (no secret).
    pub fn new(config: DecodeConfig, output: &OutputSchema, enrich_source: &str) -> Self {
        let names = config
            .schema
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone().into_boxed_str(), i))
            .collect();
        let field_names: Vec<&str> = config
            .schema
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        Decoder {
            key_order: KeyOrder::new(&field_names),
            output: Arc::clone(output.arrow()),
            dead_schema: dead_letter_schema(),
            names,
            enrich_source: enrich_source.to_string(),
            config,
        }
    }

    pub fn config(&self) -> &DecodeConfig {
        &self.config
    }

    /// Decodes `records` (in offset order) of `partition`, enriching through `lookup` (a
    /// `ReferenceTable` in full mode, a partial cache's view otherwise).
    pub fn decode<'a, L: Lookup + ?Sized>(
        &self,
        partition: i32,
        records: impl ExactSizeIterator<Item = RawRecord<'a>>,
        lookup: &L,
        now_wall_ms: i64,
    ) -> Result<DecodedBatch, DecodeError> {
        let n = records.len();
        let fields = &self.config.schema.fields;
        let mut columns: Vec<ColumnBuilder> = fields
            .iter()
            .map(|f| ColumnBuilder::new(&f.ty, n))
            .collect();
        let mut offsets = Vec::with_capacity(n);
        let mut kafka_ts = Vec::with_capacity(n);
        let mut event_times = Vec::with_capacity(n);
        let mut lookups: Vec<Option<u32>> = Vec::with_capacity(n);
        let mut dead = DeadLetters::default();
        let mut metas = Vec::with_capacity(n);
        let (mut hits, mut misses, mut unreachable, mut pending) = (0u64, 0u64, 0u64, 0u64);
        let mut pending_keys: std::collections::HashSet<String> = Default::default();
        let mut slots: Vec<Slot<'_>> = Vec::with_capacity(fields.len());
        let mut typed: Vec<Typed<'_>> = Vec::with_capacity(fields.len());
        for rec in records {
            let outcome = match (&rec.refused, rec.value) {
                (Some(reason), _) => Err(reason.clone()),
                (None, None) => Err("the message has no value (null)".to_string()),
                (None, Some(bytes)) => self.parse(bytes, &mut slots, &mut typed),
            };
            let outcome = outcome.and_then(|()| {
                let event_ms = match self.config.event_time_field {
                    None => rec.timestamp_ms,
                    Some(i) => match typed[i] {
                        Typed::Timestamp(us) => us.div_euclid(1000),
                        Typed::Date(d) => i64::from(d) * 86_400_000,
                        _ => return Err(format!("event-time field `{}` is null", fields[i].name)),
                    },
                };
                Ok(event_ms)
            });
            // A dead letter keeps the record's raw bytes, the reason and, when it has one, its
            // event time (the core checks that window's marks on replay).
            let mut refuse = |error: String, event_ms: Option<i64>| {
                let letter = dead.push(partition, &rec, error);
                metas.push(RecordMeta {
                    offset: rec.offset,
                    kind: RecordKind::Dead { letter, event_ms },
                });
            };
            let event_ms = match outcome {
                Ok(t) => t,
                Err(error) => {
                    refuse(error, None);
                    continue;
                }
            };
            if let Some(max) = self.config.max_future_ms {
                if event_ms > now_wall_ms.saturating_add(max) {
                    let error = format!(
                        "event time {} is more than {} ahead of the wall clock ({}); refused so it \
                         cannot move the watermark (raise --max-future if such times are real)",
                        schema::timestamp_to_string(event_ms.saturating_mul(1000)),
                        humantime::format_duration(std::time::Duration::from_millis(max as u64)),
                        schema::timestamp_to_string(now_wall_ms.saturating_mul(1000)),
                    );
                    refuse(error, Some(event_ms));
                    continue;
                }
            }
            // The one lookup and miss policy (`enrich`): a string key is borrowed, so a hit
            // allocates nothing.
            let key = typed[self.config.join_field].as_key();
            let key = key.as_deref();
            let found = key.map(|k| lookup.find(k));
            let joined = crate::enrich::join(found, key, self.config.on_miss, &self.enrich_source);
            match (&joined, found) {
                (Join::Hit(_), _) => hits += 1,
                (Join::Pending, _) => pending += 1,
                (_, Some(Found::Unreachable)) => {
                    misses += 1;
                    unreachable += 1;
                }
                _ => misses += 1,
            }
            let found = match joined {
                Join::Hit(row) => Some(row),
                Join::Null => None,
                // Decoded again once the key is asked for: a placeholder meanwhile.
                Join::Pending => {
                    if let Some(k) = key {
                        if !pending_keys.contains(k) {
                            pending_keys.insert(k.to_string());
                        }
                    }
                    None
                }
                Join::Drop => {
                    metas.push(RecordMeta {
                        offset: rec.offset,
                        kind: RecordKind::Dropped { event_ms },
                    });
                    continue;
                }
                Join::DeadLetter(error) => {
                    refuse(error, Some(event_ms));
                    continue;
                }
            };
            let row = offsets.len() as u32;
            for (builder, value) in columns.iter_mut().zip(typed.iter()) {
                builder.append(value);
            }
            offsets.push(rec.offset);
            kafka_ts.push(rec.timestamp_ms);
            event_times.push(event_ms);
            lookups.push(found);
            metas.push(RecordMeta {
                offset: rec.offset,
                kind: RecordKind::Row { row, event_ms },
            });
        }
        let rows = self.rows_batch(
            partition,
            columns,
            &offsets,
            &kafka_ts,
            &event_times,
            &lookups,
            lookup,
        )?;
        let dead = dead
            .finish(&self.dead_schema)
            .map_err(|message| DecodeError { partition, message })?;
        Ok(DecodedBatch {
            partition,
            rows,
            dead,
            metas,
            enrich_hits: hits,
            enrich_misses: misses,
            enrich_unreachable: unreachable,
            enrich_pending: pending,
            pending_keys: pending_keys.into_iter().collect(),
        })
    }

    /// Parses and types one value into `typed` (one entry per schema field).
    fn parse<'b>(
        &self,
        bytes: &'b [u8],
        slots: &mut Vec<Slot<'b>>,
        typed: &mut Vec<Typed<'b>>,
    ) -> Result<(), String> {
        let fields = &self.config.schema.fields;
        // Cleared per record; borrowed strings live as long as the batch's bytes.
        slots.clear();
        slots.resize(fields.len(), Slot::Missing);
        if !self.scan_flat(bytes, slots) {
            // Not for the fast path (an escape, a malformed message, ...): serde_json decides,
            // from empty slots.
            slots.fill(Slot::Missing);
            self.parse_serde(bytes, slots)?;
        }
        typed.clear();
        for (field, slot) in fields.iter().zip(slots.drain(..)) {
            let value = match slot {
                Slot::Missing | Slot::Null => {
                    if field.required {
                        return Err(format!(
                            "field `{}`: is required but missing or null",
                            field.name
                        ));
                    }
                    Typed::Null
                }
                slot => type_slot(&field.ty, slot).map_err(|found| {
                    format!(
                        "field `{}`: expected {}, found {found}",
                        field.name,
                        field.ty.describe()
                    )
                })?,
            };
            typed.push(value);
        }
        Ok(())
    }

    /// The fast path ([`flat_json`]): `false` when it does not handle `bytes`.
    fn scan_flat<'b>(&self, bytes: &'b [u8], slots: &mut [Slot<'b>]) -> bool {
        flat_json::scan_object(bytes, &self.key_order, &mut |key, value| {
            let index = match key {
                FieldKey::Known(i) => Some(i),
                FieldKey::Other(name) => self.names.get(name).copied(),
            };
            if let Some(i) = index {
                slots[i] = match value {
                    FlatValue::Null => Slot::Null,
                    FlatValue::Bool(b) => Slot::Bool(b),
                    FlatValue::U64(v) => Slot::U64(v),
                    FlatValue::I64(v) => Slot::I64(v),
                    FlatValue::F64(v) => Slot::F64(v),
                    FlatValue::Str(s) => Slot::Str(Cow::Borrowed(s)),
                    FlatValue::Array => Slot::Array,
                    FlatValue::Object => Slot::Object,
                };
            }
        })
        .is_some()
    }

    /// serde_json's reading of `bytes` into `slots`, with its error messages.
    fn parse_serde<'b>(&self, bytes: &'b [u8], slots: &mut Vec<Slot<'b>>) -> Result<(), String> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let top = de
            .deserialize_any(TopVisitor {
                names: &self.names,
                fields: &self.config.schema,
                slots,
            })
            .and_then(|top| de.end().map(|()| top));
        match top {
            Err(e) => return Err(format!("field `(message)`: is not valid JSON: {e}")),
            Ok(Top::NotObject(kind)) => {
                return Err(format!(
                    "field `(message)`: is JSON but not an object (found {kind})"
                ))
            }
            Ok(Top::Object) => {}
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn rows_batch<L: Lookup + ?Sized>(
        &self,
        partition: i32,
        columns: Vec<ColumnBuilder>,
        offsets: &[i64],
        kafka_ts: &[i64],
        event_times: &[i64],
        lookups: &[Option<u32>],
        lookup: &L,
    ) -> Result<RecordBatch, DecodeError> {
        let fail = |message: String| DecodeError { partition, message };
        let n = offsets.len();
        let mut arrays: Vec<ArrayRef> = columns.into_iter().map(ColumnBuilder::finish).collect();
        let indices = UInt32Array::from(lookups.to_vec());
        for c in 0..lookup.columns().len() {
            arrays.push(lookup.column(c, &indices).map_err(fail)?);
        }
        let micros = |ms: i64| ms.saturating_mul(1000);
        let w = self.config.window_ms;
        arrays.push(Arc::new(Int32Array::from_value(partition, n)));
        arrays.push(Arc::new(Int64Array::from(offsets.to_vec())));
        let ts = |values: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
        };
        arrays.push(ts(kafka_ts.iter().map(|&t| micros(t)).collect()));
        arrays.push(ts(event_times
            .iter()
            .map(|&t| micros(window_start(t, w)))
            .collect()));
        arrays.push(ts(event_times
            .iter()
            .map(|&t| micros(window_end(window_start(t, w), w)))
            .collect()));
        RecordBatch::try_new(Arc::clone(&self.output), arrays).map_err(|e| fail(e.to_string()))
    }
}

/// The schema fields of row `row` of a decoded batch, back as typed values (for tests and the
/// fuzz targets, which compare the decoder with `Schema::decode_json`, the reference).
pub fn row_values(schema: &Schema, rows: &RecordBatch, row: usize) -> Vec<schema::Value> {
    schema
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| schema::array_value(&f.ty, rows.column(i).as_ref(), row))
        .collect()
}

/// A field's raw JSON value.
#[derive(Debug, Clone, PartialEq)]
enum Slot<'a> {
    Missing,
    Null,
    Str(Cow<'a, str>),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
    Array,
    Object,
}

/// A field's typed value.
#[derive(Debug, Clone, PartialEq)]
enum Typed<'a> {
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Date(i32),
    Timestamp(i64),
}

impl Typed<'_> {
    /// The value as an enrichment key (as `schema::Value::as_key` writes it).
    fn as_key(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            Typed::Null => return None,
            Typed::Str(s) => Cow::Borrowed(s.as_ref()),
            Typed::Int(i) => Cow::Owned(i.to_string()),
            Typed::Float(f) => Cow::Owned(f.to_string()),
            Typed::Bool(b) => Cow::Owned(b.to_string()),
            Typed::Date(d) => Cow::Owned(schema::date_to_string(*d)),
            Typed::Timestamp(t) => Cow::Owned(schema::timestamp_to_string(*t)),
        })
    }
}

/// Types a present, non-null slot; `Err` carries how the value looked (for the message).
fn type_slot<'a>(ty: &FieldType, slot: Slot<'a>) -> Result<Typed<'a>, String> {
    let shown = |slot: &Slot<'_>| -> String {
        match slot {
            Slot::Str(s) => schema::shorten(&serde_json::to_string(s.as_ref()).unwrap_or_default()),
            Slot::I64(v) => v.to_string(),
            Slot::U64(v) => v.to_string(),
            Slot::F64(v) => format!("{v}"),
            Slot::Bool(b) => b.to_string(),
            Slot::Array => "an array".into(),
            Slot::Object => "an object".into(),
            Slot::Missing | Slot::Null => "null".into(),
        }
    };
    let typed = match (ty, &slot) {
        (FieldType::String, Slot::Str(_)) => match slot {
            Slot::Str(s) => Typed::Str(s),
            _ => unreachable!(),
        },
        (FieldType::Digits { width }, Slot::Str(s))
            if s.bytes().all(|b| b.is_ascii_digit()) && (*width == 0 || s.len() == *width) =>
        {
            match slot {
                Slot::Str(s) => Typed::Str(s),
                _ => unreachable!(),
            }
        }
        (FieldType::Int { .. }, Slot::I64(v)) => Typed::Int(*v),
        (FieldType::Int { .. }, Slot::U64(v)) if *v <= i64::MAX as u64 => Typed::Int(*v as i64),
        (FieldType::Float | FieldType::DecimalComma, Slot::I64(v)) => Typed::Float(*v as f64),
        (FieldType::Float | FieldType::DecimalComma, Slot::U64(v)) => Typed::Float(*v as f64),
        (FieldType::Float | FieldType::DecimalComma, Slot::F64(v)) => Typed::Float(*v),
        (FieldType::Bool, Slot::Bool(b)) => Typed::Bool(*b),
        (FieldType::Date { .. }, Slot::Str(s)) => {
            match chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                Ok(d) => Typed::Date(schema::days_since_epoch(d)),
                Err(_) => return Err(shown(&slot)),
            }
        }
        (FieldType::Timestamp { .. }, Slot::Str(s)) => match schema::parse_json_timestamp(s) {
            Some(us) => Typed::Timestamp(us),
            None => return Err(shown(&slot)),
        },
        _ => return Err(shown(&slot)),
    };
    Ok(typed)
}

enum Top {
    Object,
    NotObject(&'static str),
}

struct TopVisitor<'s, 'b> {
    names: &'s HashMap<Box<str>, usize>,
    fields: &'s Schema,
    slots: &'s mut Vec<Slot<'b>>,
}

impl<'de, 's> Visitor<'de> for TopVisitor<'s, 'de> {
    type Value = Top;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        // Producers write the fields in schema order: try the next expected name first.
        let mut hint = 0usize;
        let fields = &self.fields.fields;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let index = match fields.get(hint) {
                Some(f) if f.name == key.as_ref() => Some(hint),
                _ => self.names.get(key.as_ref()).copied(),
            };
            match index {
                Some(i) => {
                    self.slots[i] = map.next_value_seed(SlotSeed)?;
                    hint = i + 1;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Top::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Top, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Top::NotObject("an array"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Top, E> {
        Ok(Top::NotObject("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Top, E> {
        Ok(Top::NotObject("null"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top, E> {
        Ok(Top::NotObject("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top, E> {
        Ok(Top::NotObject("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top, E> {
        Ok(Top::NotObject("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top, E> {
        Ok(Top::NotObject("a number"))
    }
}

/// A map key, borrowed from the message when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// A field value of any JSON kind.
struct SlotSeed;

impl<'de> DeserializeSeed<'de> for SlotSeed {
    type Value = Slot<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(SlotVisitor)
    }
}

struct SlotVisitor;

impl<'de> Visitor<'de> for SlotVisitor {
    type Value = Slot<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Slot::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Slot::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Slot::U64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Slot::F64(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Slot::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Slot::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Slot::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Slot::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Slot::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Slot::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Slot::Object)
    }
}

/// A column being built, by Arrow type.
enum ColumnBuilder {
    Utf8(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl ColumnBuilder {
    fn new(ty: &FieldType, n: usize) -> Self {
        match ty {
            FieldType::String | FieldType::Digits { .. } => {
                ColumnBuilder::Utf8(StringBuilder::with_capacity(n, n * 24))
            }
            FieldType::Int { .. } => ColumnBuilder::Int(Int64Builder::with_capacity(n)),
            FieldType::Float | FieldType::DecimalComma => {
                ColumnBuilder::Float(Float64Builder::with_capacity(n))
            }
            FieldType::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(n)),
            FieldType::Date { .. } => ColumnBuilder::Date(Date32Builder::with_capacity(n)),
            FieldType::Timestamp { .. } => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"),
            ),
        }
    }

    /// Appends a value typed for this column (`type_slot` guarantees the match).
    fn append(&mut self, value: &Typed<'_>) {
        match (self, value) {
            (ColumnBuilder::Utf8(b), Typed::Str(s)) => b.append_value(s),
            (ColumnBuilder::Int(b), Typed::Int(v)) => b.append_value(*v),
            (ColumnBuilder::Float(b), Typed::Float(v)) => b.append_value(*v),
            (ColumnBuilder::Bool(b), Typed::Bool(v)) => b.append_value(*v),
            (ColumnBuilder::Date(b), Typed::Date(v)) => b.append_value(*v),
            (ColumnBuilder::Timestamp(b), Typed::Timestamp(v)) => b.append_value(*v),
            (ColumnBuilder::Utf8(b), _) => b.append_null(),
            (ColumnBuilder::Int(b), _) => b.append_null(),
            (ColumnBuilder::Float(b), _) => b.append_null(),
            (ColumnBuilder::Bool(b), _) => b.append_null(),
            (ColumnBuilder::Date(b), _) => b.append_null(),
            (ColumnBuilder::Timestamp(b), _) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::Utf8(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Date(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Dead letters being collected: raw bytes, losslessly.
#[derive(Default)]
struct DeadLetters {
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    timestamps: Vec<i64>,
    keys: Vec<Option<Vec<u8>>>,
    values: Vec<Option<Vec<u8>>>,
    errors: Vec<String>,
}

impl DeadLetters {
    fn push(&mut self, partition: i32, rec: &RawRecord<'_>, error: String) -> u32 {
        let i = self.offsets.len() as u32;
        self.partitions.push(partition);
        self.offsets.push(rec.offset);
        self.timestamps.push(rec.timestamp_ms.saturating_mul(1000));
        self.keys.push(rec.key.map(<[u8]>::to_vec));
        self.values.push(rec.value.map(<[u8]>::to_vec));
        self.errors.push(error);
        i
    }

    fn finish(self, schema: &SchemaRef) -> Result<RecordBatch, String> {
        let binary = |items: &[Option<Vec<u8>>]| -> ArrayRef {
            let mut b = BinaryBuilder::with_capacity(
                items.len(),
                items.iter().flatten().map(Vec::len).sum(),
            );
            for item in items {
                b.append_option(item.as_deref());
            }
            Arc::new(b.finish())
        };
        let mut errors = StringBuilder::new();
        for e in &self.errors {
            errors.append_value(e);
        }
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(Int32Array::from(self.partitions)),
                Arc::new(Int64Array::from(self.offsets)),
                Arc::new(TimestampMicrosecondArray::from(self.timestamps).with_timezone("UTC")),
                binary(&self.keys),
                binary(&self.values),
                Arc::new(errors.finish()),
            ],
        )
        .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::ReferenceTable;
    use crate::schema::{FieldType, Source, Value};
    use arrow::array::{Array, AsArray};
    use proptest::prelude::*;

    fn table() -> ReferenceTable {
        ReferenceTable::one_bank()
    }

    fn decoder(on_miss: OnMiss, max_future_ms: Option<i64>) -> Decoder {
        let schema = Arc::new(Schema::banco_central());
        let join = schema
            .fields
            .iter()
            .position(|f| f.name == "cnpj_if")
            .unwrap();
        let output = OutputSchema::new(&schema, &table().columns).unwrap();
        Decoder::new(
            DecodeConfig {
                schema,
                event_time_field: None,
                join_field: join,
                on_miss,
                max_future_ms,
                window_ms: 60_000,
            },
            &output,
            "mysql://127.0.0.1:3306/db",
        )
    }

    fn json(cnpj: Option<&str>, name: &str) -> Vec<u8> {
        let schema = Schema::banco_central();
        let mut values = vec![Value::Null; schema.fields.len()];
        values[0] = Value::Int(2025);
        values[1] = Value::Int(2);
        values[2] = Value::Str("Cat".into());
        values[3] = Value::Str("Banco".into());
        values[4] = cnpj.map_or(Value::Null, |c| Value::Str(c.into()));
        values[5] = Value::Str(name.into());
        values[6] = Value::Float(54.79);
        let mut out = String::new();
        schema.write_json(
            &values,
            Some(&Source {
                file: "f".into(),
                line: 1,
            }),
            &mut out,
        );
        out.into_bytes()
    }

    /// A JSON object of `(field, shape)` pairs: `names[field]` (or `other` past the end) set to
    /// the JSON text `shapes[shape]`.
    fn object_of(names: &[String], fields: &[(usize, u8)], shapes: &[&str], other: &str) -> String {
        let body: Vec<String> = fields
            .iter()
            .map(|&(f, v)| {
                let name = names.get(f).map_or(other, String::as_str);
                format!("\"{name}\":{}", shapes[v as usize])
            })
            .collect();
        format!("{{{}}}", body.join(","))
    }

    fn decode(d: &Decoder, values: &[Option<Vec<u8>>], now: i64) -> DecodedBatch {
        let records: Vec<RawRecord<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| RawRecord {
                offset: 100 + i as i64,
                timestamp_ms: 1_000 * i as i64,
                key: None,
                value: v.as_deref(),
                refused: None,
            })
            .collect();
        d.decode(7, records.into_iter(), &table(), now).unwrap()
    }

    #[test]
    fn rows_are_typed_enriched_and_carry_their_window() {
        let d = decoder(OnMiss::Null, None);
        let batch = decode(
            &d,
            &[
                Some(json(Some("00360305"), "CAIXA ECONÔMICA \"FEDERAL\"")),
                Some(json(None, "SEM CNPJ")),
            ],
            0,
        );
        assert_eq!(batch.rows.num_rows(), 2);
        assert_eq!((batch.enrich_hits, batch.enrich_misses), (1, 1));
        let col = |name: &str| batch.rows.column_by_name(name).unwrap().clone();
        assert_eq!(
            col("instituicao_financeira").as_string::<i32>().value(0),
            "CAIXA ECONÔMICA \"FEDERAL\""
        );
        assert_eq!(col("banco_nome").as_string::<i32>().value(0), "CAIXA");
        assert!(col("banco_nome").is_null(1));
        assert_eq!(
            col("indice")
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(0),
            54.79
        );
        assert_eq!(
            col("kafka_offset")
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values(),
            &[100, 101]
        );
        assert_eq!(
            batch.metas[1],
            RecordMeta {
                offset: 101,
                kind: RecordKind::Row {
                    row: 1,
                    event_ms: 1_000
                }
            }
        );
    }

    #[test]
    fn bad_records_become_dead_letters_with_the_reason_and_the_raw_bytes() {
        let d = decoder(OnMiss::DeadLetter, Some(300_000));
        let good = json(Some("00360305"), "OK");
        let wrong_type = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"ano\":2025", "\"ano\":\"2025\"");
        let missing = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"instituicao_financeira\":\"OK\",", "");
        let cases: Vec<(Option<Vec<u8>>, &str)> = vec![
            (Some(b"hello".to_vec()), "is not valid JSON"),
            (
                Some(b"[1,{\"a\":2}]".to_vec()),
                "not an object (found an array)",
            ),
            (Some(b"null".to_vec()), "not an object (found null)"),
            (None, "the message has no value (null)"),
            (
                Some(wrong_type.into_bytes()),
                "field `ano`: expected an integer, found \"2025\"",
            ),
            (
                Some(missing.into_bytes()),
                "field `instituicao_financeira`: is required but missing or null",
            ),
            (Some([&good[..], b" x"].concat()), "trailing characters"),
            (
                Some(json(Some("99999999"), "MISS")),
                "key `99999999` not found",
            ),
            (Some(json(None, "NO KEY")), "no key to look up"),
        ];
        let values: Vec<Option<Vec<u8>>> = cases.iter().map(|(v, _)| v.clone()).collect();
        let batch = decode(&d, &values, 10_000_000);
        assert_eq!(batch.rows.num_rows(), 0);
        assert_eq!(batch.dead.num_rows(), cases.len());
        let errors = batch.dead.column(5).as_string::<i32>();
        let raw = batch.dead.column(4).as_binary::<i32>();
        for (i, (value, expected)) in cases.iter().enumerate() {
            assert!(
                errors.value(i).contains(expected),
                "{i}: {}",
                errors.value(i)
            );
            match value {
                Some(v) => assert_eq!(raw.value(i), &v[..]),
                None => assert!(raw.is_null(i)),
            }
        }
        // A refused but decodable record keeps its event time (the core checks its window's marks).
        assert!(matches!(
            batch.metas[7].kind,
            RecordKind::Dead {
                event_ms: Some(_),
                ..
            }
        ));
        assert!(matches!(
            batch.metas[0].kind,
            RecordKind::Dead { event_ms: None, .. }
        ));
    }

    #[test]
    fn far_future_event_times_are_refused() {
        let d = decoder(OnMiss::Null, Some(300_000));
        let now = 1_000_000_000_000;
        let ok = RawRecord {
            offset: 0,
            timestamp_ms: now + 299_000,
            key: None,
            value: None,
            refused: None,
        };
        let v = json(Some("00360305"), "X");
        let records = [
            RawRecord {
                value: Some(&v),
                refused: None,
                ..ok
            },
            RawRecord {
                offset: 1,
                timestamp_ms: now + 3_000_000,
                key: None,
                value: Some(&v),
                refused: None,
            },
        ];
        let batch = d.decode(0, records.into_iter(), &table(), now).unwrap();
        assert_eq!(batch.rows.num_rows(), 1);
        let error = batch.dead.column(5).as_string::<i32>().value(0).to_string();
        assert!(
            error.contains("ahead of the wall clock") && error.contains("--max-future"),
            "{error}"
        );
    }

    #[test]
    fn on_miss_drop_is_counted_not_written() {
        let d = decoder(OnMiss::Drop, None);
        let batch = decode(&d, &[Some(json(Some("12345678"), "X"))], 0);
        assert_eq!((batch.rows.num_rows(), batch.dead.num_rows()), (0, 0));
        assert!(matches!(batch.metas[0].kind, RecordKind::Dropped { .. }));
    }

    fn banks(keys: &[&str]) -> ReferenceTable {
        ReferenceTable::build(
            "banco_",
            vec![
                ("cnpj".into(), FieldType::String),
                ("nome".into(), FieldType::String),
            ],
            keys.iter()
                .map(|k| vec![Value::Str(k.to_string()), Value::Str(format!("BANCO {k}"))])
                .collect(),
        )
    }

    fn decode_with<L: Lookup + ?Sized>(
        d: &Decoder,
        values: &[Vec<u8>],
        lookup: &L,
    ) -> DecodedBatch {
        let records = values.iter().enumerate().map(|(i, v)| RawRecord {
            offset: i as i64,
            timestamp_ms: 1_000,
            key: None,
            value: Some(v.as_slice()),
            refused: None,
        });
        let records: Vec<_> = records.collect();
        d.decode(3, records.into_iter(), lookup, 0).unwrap()
    }

    #[test]
    fn a_partial_cache_reports_the_keys_to_ask_then_enriches_from_the_answers() {
        use crate::enrich::partial::{Limits, Overlay, PartialCache, PartialView};
        let d = decoder(OnMiss::DeadLetter, None);
        let full = banks(&["00360305", "60746948"]);
        let cache = PartialCache::new(Limits {
            max_bytes: 1 << 20,
            ttl_ms: None,
        });
        let values = vec![
            json(Some("00360305"), "a"),
            json(Some("60746948"), "b"),
            json(Some("00360305"), "c"),
            json(Some("11111111"), "d"),
        ];
        let mut overlay = Overlay::default();
        let view = PartialView {
            cache: &cache,
            overlay: &overlay,
            columns: &full.columns,
            now_ms: 0,
        };
        let first = decode_with(&d, &values, &view);
        let mut pending = first.pending_keys.clone();
        pending.sort();
        assert_eq!(pending, vec!["00360305", "11111111", "60746948"]);
        assert_eq!(first.enrich_pending, 4);
        // Unreachable: the records follow --on-miss with that reason; found keys are enriched.
        overlay.answer(
            "00360305".into(),
            Some(vec![Value::Str("BANCO 00360305".into())]),
        );
        overlay.unreachable("60746948".into());
        overlay.answer("11111111".into(), None);
        let view = PartialView {
            cache: &cache,
            overlay: &overlay,
            columns: &full.columns,
            now_ms: 0,
        };
        let batch = decode_with(&d, &values, &view);
        assert!(batch.pending_keys.is_empty());
        assert_eq!(
            (
                batch.enrich_hits,
                batch.enrich_misses,
                batch.enrich_unreachable
            ),
            (2, 2, 1)
        );
        let errors = batch.dead_letter_errors();
        assert!(
            errors[0].contains("dimension unreachable: key `60746948`"),
            "{errors:?}"
        );
        assert!(errors[1].contains("key `11111111` not found"), "{errors:?}");
        let names = batch.rows.column_by_name("banco_nome").unwrap();
        assert_eq!(names.as_string::<i32>().value(1), "BANCO 00360305");
    }

    proptest! {
        /// A partial cache holding any part of the dimension (rows, absent keys), with the keys
        /// it lacks asked for, gives exactly the rows, dead letters and routes the full table
        /// gives.
        #[test]
        fn partial_cache_rows_equal_full_cache_rows(
            picks in proptest::collection::vec(0..6usize, 1..30),
            held in proptest::collection::vec(any::<bool>(), 6),
            tiny in any::<bool>(),
            on_miss in prop_oneof![Just(OnMiss::Null), Just(OnMiss::Drop), Just(OnMiss::DeadLetter)],
        ) {
            use crate::enrich::partial::{Limits, Overlay, PartialCache, PartialView};
            let universe = ["00360305", "60746948", "00000000", "12345678", "99999999", "55555555"];
            let full = banks(&universe[..3]);
            let d = decoder(on_miss, None);
            let values: Vec<Vec<u8>> = picks.iter().enumerate()
                .map(|(i, &k)| json(Some(universe[k]), &format!("r{i}"))).collect();
            let answer = |key: &str| match full.find(key) {
                Found::Row(r) => Some(full.row(r)),
                _ => None,
            };
            // The cache holds some keys (a tiny bound evicts most of them).
            let mut cache = PartialCache::new(Limits {
                max_bytes: if tiny { 300 } else { 1 << 20 },
                ttl_ms: None,
            });
            for (key, _) in universe.iter().zip(&held).filter(|(_, h)| **h) {
                cache.insert(key, answer(key), 0);
            }
            let mut overlay = Overlay::default();
            let batch = loop {
                let view = PartialView { cache: &cache, overlay: &overlay, columns: &full.columns, now_ms: 0 };
                let batch = decode_with(&d, &values, &view);
                if batch.pending_keys.is_empty() {
                    break batch;
                }
                for key in batch.pending_keys {
                    let row = answer(&key);
                    overlay.answer(key, row);
                }
            };
            let expected = decode_with(&d, &values, &full);
            prop_assert_eq!(&batch.rows, &expected.rows);
            prop_assert_eq!(&batch.dead, &expected.dead);
            prop_assert_eq!(&batch.metas, &expected.metas);
            prop_assert_eq!((batch.enrich_hits, batch.enrich_misses), (expected.enrich_hits, expected.enrich_misses));
        }

        /// What `produce` writes, `consume` decodes: any text survives.
        #[test]
        fn any_institution_name_round_trips(name in "\\PC{0,40}") {
            let d = decoder(OnMiss::Null, None);
            let batch = decode(&d, &[Some(json(Some("00360305"), &name))], 0);
            prop_assert_eq!(batch.rows.num_rows(), 1, "{:?}", batch.dead.column(5));
            let col = batch.rows.column_by_name("instituicao_financeira").unwrap();
            prop_assert_eq!(col.as_string::<i32>().value(0), name.as_str());
        }

        /// The decoder agrees with `Schema::decode_json` (the simple reference): the same records
        /// accepted, with the same values.
        #[test]
        fn agrees_with_the_reference_decoder(fields in proptest::collection::vec((0..16usize, 0..9u8), 0..20)) {
            let schema = Schema::banco_central();
            let names: Vec<String> = schema.fields.iter().map(|f| f.name.clone()).collect();
            let shapes = ["null", "2025", "-7", "54.79", "1e300", "\"x\"", "\"00360305\"", "true", "[1]"];
            let value = object_of(&names, &fields, &shapes, "outro");
            let d = decoder(OnMiss::Null, None);
            let batch = decode(&d, &[Some(value.clone().into_bytes())], 0);
            match schema.decode_json(value.as_bytes()) {
                Ok((values, _)) => {
                    prop_assert_eq!(batch.rows.num_rows(), 1, "{} {:?}", value, batch.dead.column(5));
                    prop_assert_eq!(row_values(&schema, &batch.rows, 0), values);
                }
                Err(e) => prop_assert_eq!(batch.rows.num_rows(), 0, "{} accepted, the reference says {}", value, e),
            }
        }

        /// The fast path and serde_json fill the same slots wherever the fast path answers, and
        /// it answers for what the producer writes.
        #[test]
        fn fast_path_fills_the_slots_serde_json_fills(
            fields in proptest::collection::vec((0..17usize, 0..12u8), 0..20),
            name in "\\PC{0,12}",
        ) {
            let d = decoder(OnMiss::Null, None);
            let names: Vec<String> = d.config.schema.fields.iter().map(|f| f.name.clone()).collect();
            let quoted = serde_json::to_string(&name).unwrap();
            let shapes = ["null", "2025", "-7", "54.79", "1e300", "\"x\"", "\"00360305\"", "true", "[1]",
                "{\"file\":\"f\",\"line\":1}", quoted.as_str(), "\"a\\u00e7\""];
            let value = object_of(&names, &fields, &shapes, "_source");
            let n = names.len();
            let mut fast = vec![Slot::Missing; n];
            let answered = d.scan_flat(value.as_bytes(), &mut fast);
            let mut slow = vec![Slot::Missing; n];
            let serde = d.parse_serde(value.as_bytes(), &mut slow);
            prop_assert!(serde.is_ok(), "{}: {:?}", value, serde);
            let escaped = value.contains('\\');
            prop_assert_eq!(answered, !escaped, "{}", value);
            if answered {
                prop_assert_eq!(fast, slow, "{}", value);
            }
        }

        #[test]
        fn producer_output_takes_the_fast_path(name in "\\PC{0,40}") {
            let d = decoder(OnMiss::Null, None);
            let value = json(Some("00360305"), &name);
            let mut slots = vec![Slot::Missing; d.config.schema.fields.len()];
            let plain = !name.chars().any(|c| c == '"' || c == '\\' || c < ' ');
            prop_assert_eq!(d.scan_flat(&value, &mut slots), plain, "{}", String::from_utf8_lossy(&value));
        }

        /// Arbitrary bytes never panic and always account for every record.
        #[test]
        fn arbitrary_bytes_are_rows_or_dead_letters(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let d = decoder(OnMiss::Null, None);
            let values: Vec<Option<Vec<u8>>> = values.into_iter().map(Some).collect();
            let batch = decode(&d, &values, 0);
            prop_assert_eq!(batch.rows.num_rows() + batch.dead.num_rows(), values.len());
            prop_assert_eq!(batch.metas.len(), values.len());
        }
    }
}

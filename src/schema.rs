//! The typed shape of a complaint record, shared by `produce` and `consume`.
//!
//! A [`Schema`] says, per CSV column, the output field name, its [`FieldType`] and whether it is
//! required; which field is the Kafka key; and optionally which field is the event time. It owns
//! three conversions, so both commands agree on them by construction:
//!
//! ```text
//!   CSV text ──parse_cell──▶ Value ──write_json──▶ Kafka value (UTF-8 JSON)
//!                                         │
//!   Kafka value ──decode_json──▶ Vec<Value> ──▶ Arrow columns (parquet_sink)
//! ```
//!
//! The built-in schema ([`Schema::banco_central`]) describes the Banco Central "Ranking de
//! reclamações" files; `--schema FILE` loads any other from TOML (see [`SchemaFile`]).

use std::collections::HashMap;
use std::path::Path;

use arrow::datatypes::{DataType, Field as ArrowField, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use serde::Deserialize;

/// Errors of this module. Every message names what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read schema file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("schema file {path} is not valid: {message}. See `--schema FILE` in docs/produce.md")]
    Invalid { path: String, message: String },
    #[error(
        "{file}: header does not match the schema `{schema}`: {problem}. Expected columns: {expected}. \
         Pass `--schema FILE` describing this file, or fix its header"
    )]
    Header {
        file: String,
        schema: String,
        problem: String,
        expected: String,
    },
}

/// The type of one field, and how its CSV text is read.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    /// Text, kept as it is (after trimming).
    String,
    /// A signed 64-bit integer. `ordinal` also accepts a trailing `º`, `ª` or `°` (`4º` -> 4).
    Int { ordinal: bool },
    /// A float with a decimal point (`54.79`).
    Float,
    /// A float with a decimal comma (`54,79`, `1.234,5`), as Brazilian files write them.
    DecimalComma,
    /// `true/false`, `1/0`, `sim/não`, `s/n`, `yes/no` (any case).
    Bool,
    /// A calendar date read with a chrono `format` (default `%Y-%m-%d`).
    Date { format: String },
    /// A date and time read with a chrono `format`; stored as UTC microseconds. A format without
    /// an offset is taken as UTC.
    Timestamp { format: String },
    /// A string of ASCII digits, left-padded with zeros to `width` (`360305` -> `00360305`).
    Digits { width: usize },
}

impl FieldType {
    /// The Arrow type of this field in the Parquet output.
    pub fn arrow_type(&self) -> DataType {
        match self {
            FieldType::String | FieldType::Digits { .. } => DataType::Utf8,
            FieldType::Int { .. } => DataType::Int64,
            FieldType::Float | FieldType::DecimalComma => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::Date { .. } => DataType::Date32,
            FieldType::Timestamp { .. } => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
        }
    }

    /// How errors name the type (`an integer`, `up to 8 digits`).
    pub(crate) fn describe(&self) -> String {
        match self {
            FieldType::String => "text".into(),
            FieldType::Int { ordinal: false } => "an integer".into(),
            FieldType::Int { ordinal: true } => "an integer (optionally with º)".into(),
            FieldType::Float => "a number with a decimal point".into(),
            FieldType::DecimalComma => "a number with a decimal comma".into(),
            FieldType::Bool => "a boolean".into(),
            FieldType::Date { format } => format!("a date in format {format}"),
            FieldType::Timestamp { format } => format!("a timestamp in format {format}"),
            FieldType::Digits { width } => format!("up to {width} digits"),
        }
    }
}

/// One typed value. Dates are days since 1970-01-01; timestamps are UTC microseconds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Date(i32),
    Timestamp(i64),
}

impl Value {
    /// Approximate heap + inline size, used to bound buffers: a string counts its capacity plus
    /// the allocator's per-allocation overhead.
    pub fn size_bytes(&self) -> usize {
        std::mem::size_of::<Value>()
            + match self {
                Value::Str(s) => s.capacity() + 16,
                _ => 0,
            }
    }

    /// The value as a lookup key (for enrichment joins and Kafka keys).
    pub fn as_key(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Str(s) => Some(s.clone()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Date(d) => Some(date_to_string(*d)),
            Value::Timestamp(t) => Some(timestamp_to_string(*t)),
        }
    }
}

/// A typed value whose text is borrowed from the CSV record it was read from: what
/// [`Schema::parse_cell_ref`] returns. [`Cell::into_value`] gives the owned [`Value`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Null,
    Str(&'a str),
    /// ASCII digits, to be left-padded with zeros to `width`.
    Digits {
        digits: &'a str,
        width: usize,
    },
    Int(i64),
    Float(f64),
    Bool(bool),
    Date(i32),
    Timestamp(i64),
}

impl Cell<'_> {
    pub fn into_value(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Str(s) => Value::Str(s.to_string()),
            Cell::Digits { digits, width } => Value::Str(format!("{digits:0>width$}")),
            Cell::Int(n) => Value::Int(n),
            Cell::Float(f) => Value::Float(f),
            Cell::Bool(b) => Value::Bool(b),
            Cell::Date(d) => Value::Date(d),
            Cell::Timestamp(t) => Value::Timestamp(t),
        }
    }

    /// Appends the cell as a Kafka key, exactly [`Value::as_key`] of its value; false (and
    /// nothing appended) for null.
    pub fn push_key(&self, out: &mut Vec<u8>) -> bool {
        match *self {
            Cell::Null => return false,
            Cell::Str(s) => out.extend_from_slice(s.as_bytes()),
            Cell::Digits { digits, width } => {
                out.resize(out.len() + width.saturating_sub(digits.len()), b'0');
                out.extend_from_slice(digits.as_bytes());
            }
            Cell::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
            other => match other.into_value().as_key() {
                Some(key) => out.extend_from_slice(key.as_bytes()),
                None => return false,
            },
        }
        true
    }

    /// The event time (UTC milliseconds) of a timestamp or date cell.
    pub fn event_time_ms(&self) -> Option<i64> {
        match *self {
            Cell::Timestamp(us) => Some(us.div_euclid(1000)),
            Cell::Date(d) => Some(i64::from(d) * 86_400_000),
            _ => None,
        }
    }
}

impl Value {
    /// The value as a borrowed [`Cell`] (strings are already padded).
    pub fn as_cell(&self) -> Cell<'_> {
        match self {
            Value::Null => Cell::Null,
            Value::Str(s) => Cell::Str(s),
            Value::Int(n) => Cell::Int(*n),
            Value::Float(f) => Cell::Float(*f),
            Value::Bool(b) => Cell::Bool(*b),
            Value::Date(d) => Cell::Date(*d),
            Value::Timestamp(t) => Cell::Timestamp(*t),
        }
    }
}

/// One field of a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Output name: snake_case ASCII.
    pub name: String,
    /// The CSV header text this field is read from (matched after [`normalize_name`]).
    pub column: String,
    pub ty: FieldType,
    pub required: bool,
}

/// A complete record schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Schema {
    /// Shown in errors (`banco_central` or the schema file's path).
    pub name: String,
    pub fields: Vec<Field>,
    /// Index of the Kafka key field.
    pub key_field: Option<usize>,
    /// Used as the key when the key field is null (the institution name in the built-in schema).
    pub key_fallback: Option<usize>,
    /// Index of the event-time field, when records carry one.
    pub event_time_field: Option<usize>,
}

/// Where a row came from; travels in the JSON value as `_source`.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub file: String,
    pub line: u64,
}

/// Why one CSV cell or JSON field could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// Turns a header into a snake_case ASCII name: `Instituição financeira` -> `instituicao_financeira`,
/// `Quantidade total de clientes – CCS e SCR` -> `quantidade_total_de_clientes_ccs_e_scr`.
pub fn normalize_name(header: &str) -> String {
    let mut out = String::with_capacity(header.len());
    let mut pending_sep = false;
    for c in header.trim().chars().flat_map(fold_accent) {
        if c.is_ascii_alphanumeric() {
            if pending_sep && !out.is_empty() {
                out.push('_');
            }
            pending_sep = false;
            out.push(c.to_ascii_lowercase());
        } else {
            pending_sep = true;
        }
    }
    out
}

/// Maps the Latin letters with diacritics used in Portuguese (and a few more) to ASCII.
fn fold_accent(c: char) -> Option<char> {
    let folded = match c {
        'á' | 'à' | 'â' | 'ã' | 'ä' | 'å' => 'a',
        'Á' | 'À' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'A',
        'é' | 'è' | 'ê' | 'ë' => 'e',
        'É' | 'È' | 'Ê' | 'Ë' => 'E',
        'í' | 'ì' | 'î' | 'ï' => 'i',
        'Í' | 'Ì' | 'Î' | 'Ï' => 'I',
        'ó' | 'ò' | 'ô' | 'õ' | 'ö' => 'o',
        'Ó' | 'Ò' | 'Ô' | 'Õ' | 'Ö' => 'O',
        'ú' | 'ù' | 'û' | 'ü' => 'u',
        'Ú' | 'Ù' | 'Û' | 'Ü' => 'U',
        'ç' => 'c',
        'Ç' => 'C',
        'ñ' => 'n',
        'Ñ' => 'N',
        'º' | 'ª' | '°' => return None,
        other => other,
    };
    Some(folded)
}

impl Schema {
    /// The built-in schema of the Banco Central "Ranking de reclamações" files.
    pub fn banco_central() -> Schema {
        let text = |column: &'static str, required: bool| (column, FieldType::String, required);
        let count = |column: &'static str| (column, FieldType::Int { ordinal: false }, false);
        let columns: Vec<(&'static str, FieldType, bool)> = vec![
            ("Ano", FieldType::Int { ordinal: false }, true),
            ("Trimestre", FieldType::Int { ordinal: true }, true),
            text("Categoria", true),
            text("Tipo", true),
            ("CNPJ IF", FieldType::Digits { width: 8 }, false),
            text("Instituição financeira", true),
            ("Índice", FieldType::DecimalComma, false),
            count("Quantidade de reclamações reguladas procedentes"),
            count("Quantidade de reclamações reguladas - outras"),
            count("Quantidade de reclamações não reguladas"),
            count("Quantidade total de reclamações"),
            count("Quantidade total de clientes – CCS e SCR"),
            count("Quantidade de clientes – CCS"),
            count("Quantidade de clientes – SCR"),
        ];
        let fields: Vec<Field> = columns
            .into_iter()
            .map(|(column, ty, required)| Field {
                name: normalize_name(column),
                column: column.to_string(),
                ty,
                required,
            })
            .collect();
        let index = |name: &str| fields.iter().position(|f| f.name == name);
        Schema {
            name: "banco_central".into(),
            key_field: index("cnpj_if"),
            key_fallback: index("instituicao_financeira"),
            event_time_field: None,
            fields,
        }
    }

    /// Loads a schema from a TOML file (format: [`SchemaFile`]).
    pub fn from_toml_file(path: &Path) -> Result<Schema, SchemaError> {
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Schema::from_toml_str(&text, &path.display().to_string())
    }

    /// Parses a schema from TOML text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Schema, SchemaError> {
        let invalid = |message: String| SchemaError::Invalid {
            path: origin.to_string(),
            message,
        };
        let file: SchemaFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if file.fields.is_empty() {
            return Err(invalid("it has no [[fields]]".into()));
        }
        let mut fields = Vec::with_capacity(file.fields.len());
        for spec in file.fields {
            let name = spec.name.unwrap_or_else(|| normalize_name(&spec.column));
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid(format!(
                    "field name `{name}` (column `{}`) must be non-empty ASCII letters, digits or _",
                    spec.column
                )));
            }
            if name.starts_with('_') || RESERVED_COLUMNS.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "field name `{name}` is reserved for the pipeline's own columns"
                )));
            }
            if fields.iter().any(|f: &Field| f.name == name) {
                return Err(invalid(format!("field name `{name}` appears twice")));
            }
            let ty = match spec.r#type.as_str() {
                "string" => FieldType::String,
                "int" => FieldType::Int { ordinal: false },
                "ordinal" => FieldType::Int { ordinal: true },
                "float" => FieldType::Float,
                "decimal_comma" => FieldType::DecimalComma,
                "bool" => FieldType::Bool,
                "date" => FieldType::Date {
                    format: spec.format.unwrap_or_else(|| "%Y-%m-%d".into()),
                },
                "timestamp" => FieldType::Timestamp {
                    format: spec
                        .format
                        .unwrap_or_else(|| "%Y-%m-%dT%H:%M:%S%.f%:z".into()),
                },
                "digits" => FieldType::Digits {
                    width: spec.width.unwrap_or(0),
                },
                other => {
                    return Err(invalid(format!(
                        "field `{name}` has unknown type `{other}`; use one of string, int, \
                         ordinal, float, decimal_comma, bool, date, timestamp, digits"
                    )))
                }
            };
            fields.push(Field {
                name,
                column: spec.column,
                ty,
                required: spec.required,
            });
        }
        let find = |what: &str, name: &Option<String>| -> Result<Option<usize>, SchemaError> {
            match name {
                None => Ok(None),
                Some(n) => fields
                    .iter()
                    .position(|f| &f.name == n)
                    .map(Some)
                    .ok_or_else(|| invalid(format!("{what} `{n}` is not one of the fields"))),
            }
        };
        let key_field = find("key", &file.key)?;
        let key_fallback = find("key_fallback", &file.key_fallback)?;
        let event_time_field = find("event_time", &file.event_time)?;
        if let Some(i) = event_time_field {
            if !matches!(
                fields[i].ty,
                FieldType::Timestamp { .. } | FieldType::Date { .. }
            ) {
                return Err(invalid(format!(
                    "event_time field `{}` must have type timestamp or date",
                    fields[i].name
                )));
            }
        }
        Ok(Schema {
            name: file.name.unwrap_or_else(|| origin.to_string()),
            fields,
            key_field,
            key_fallback,
            event_time_field,
        })
    }

    /// Matches a CSV header against the schema. Returns, per schema field, the index of its CSV
    /// column. A trailing empty column (from a trailing delimiter) is ignored.
    pub fn match_header(&self, file: &str, header: &[&str]) -> Result<Vec<usize>, SchemaError> {
        let mut header: Vec<&str> = header.to_vec();
        if header.last().is_some_and(|h| h.trim().is_empty()) {
            header.pop();
        }
        let expected = || {
            self.fields
                .iter()
                .map(|f| f.column.as_str())
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let err = |problem: String| SchemaError::Header {
            file: file.to_string(),
            schema: self.name.clone(),
            problem,
            expected: expected(),
        };
        let by_name: HashMap<String, usize> = self
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (normalize_name(&f.column), i))
            .collect();
        let mut positions = vec![usize::MAX; self.fields.len()];
        for (col, h) in header.iter().enumerate() {
            let key = normalize_name(h.trim_start_matches('\u{feff}'));
            match by_name.get(&key) {
                Some(&i) if positions[i] == usize::MAX => positions[i] = col,
                Some(_) => return Err(err(format!("column {} `{h}` appears twice", col + 1))),
                None => {
                    return Err(err(format!(
                        "column {} `{h}` is not in the schema",
                        col + 1
                    )))
                }
            }
        }
        if let Some(i) = positions.iter().position(|&p| p == usize::MAX) {
            return Err(err(format!(
                "column `{}` is missing",
                self.fields[i].column
            )));
        }
        Ok(positions)
    }

    /// Parses one CSV cell into the typed value of field `i`. Blank (empty or only spaces) is
    /// null; a required field may not be null.
    pub fn parse_cell(&self, i: usize, raw: &str) -> Result<Value, FieldError> {
        self.parse_cell_ref(i, raw).map(Cell::into_value)
    }

    /// [`parse_cell`](Self::parse_cell) without allocating: text stays borrowed from `raw`. The
    /// one place where CSV text is typed; `parse_cell` and the producer's JSON encoder both use it.
    pub fn parse_cell_ref<'a>(&self, i: usize, raw: &'a str) -> Result<Cell<'a>, FieldError> {
        let field = &self.fields[i];
        let text = trim(raw);
        let fail = |reason: String| FieldError {
            field: field.name.clone(),
            reason,
        };
        if text.is_empty() {
            return if field.required {
                Err(fail("is required but blank".into()))
            } else {
                Ok(Cell::Null)
            };
        }
        let bad = || {
            fail(format!(
                "`{}` is not {}",
                shorten(text),
                field.ty.describe()
            ))
        };
        Ok(match &field.ty {
            FieldType::String => Cell::Str(text),
            FieldType::Int { ordinal } => {
                let digits = if *ordinal {
                    text.trim_end_matches(['º', 'ª', '°']).trim_end()
                } else {
                    text
                };
                Cell::Int(digits.parse::<i64>().map_err(|_| bad())?)
            }
            FieldType::Float => Cell::Float(parse_finite(text).ok_or_else(bad)?),
            FieldType::DecimalComma => Cell::Float(parse_decimal_comma(text).ok_or_else(bad)?),
            FieldType::Bool => Cell::Bool(parse_bool(text).ok_or_else(bad)?),
            FieldType::Date { format } => {
                let d = NaiveDate::parse_from_str(text, format).map_err(|_| bad())?;
                Cell::Date(days_since_epoch(d))
            }
            FieldType::Timestamp { format } => {
                Cell::Timestamp(parse_timestamp(text, format).ok_or_else(bad)?)
            }
            FieldType::Digits { width } => {
                if !text.bytes().all(|b| b.is_ascii_digit()) || (*width > 0 && text.len() > *width)
                {
                    return Err(bad());
                }
                Cell::Digits {
                    digits: text,
                    width: *width,
                }
            }
        })
    }

    /// The Kafka key of a typed row: the key field, else the fallback field, else none.
    pub fn key_of(&self, values: &[Value]) -> Option<String> {
        let pick = |i: Option<usize>| i.and_then(|i| values.get(i)).and_then(Value::as_key);
        pick(self.key_field).or_else(|| pick(self.key_fallback))
    }

    /// The event time (UTC milliseconds) of a typed row, when the schema has an event-time field
    /// and it is not null.
    pub fn event_time_ms(&self, values: &[Value]) -> Option<i64> {
        match values.get(self.event_time_field?)? {
            Value::Timestamp(us) => Some(us.div_euclid(1000)),
            Value::Date(d) => Some(i64::from(*d) * 86_400_000),
            _ => None,
        }
    }

    /// Appends the JSON object of a typed row (plus `_source`) to `out`. Field order is the
    /// schema's; dates and timestamps are ISO-8601 strings; non-finite floats are null.
    pub fn write_json(&self, values: &[Value], source: Option<&Source>, out: &mut String) {
        let mut bytes = Vec::with_capacity(1024);
        self.write_json_bytes(values, source, &mut bytes);
        out.push_str(std::str::from_utf8(&bytes).expect("JSON of UTF-8 text is UTF-8"));
    }

    /// [`write_json`](Self::write_json) into bytes. Made of the same pieces as the producer's
    /// encoder ([`Schema::json_field_prefix`], [`push_cell_json`], [`json_source_prefix`]), so
    /// both write the same bytes.
    pub fn write_json_bytes(&self, values: &[Value], source: Option<&Source>, out: &mut Vec<u8>) {
        for (i, value) in values.iter().enumerate().take(self.fields.len()) {
            self.json_field_prefix(i, out);
            push_cell_json(out, &value.as_cell());
        }
        match source {
            Some(src) => {
                out.extend_from_slice(&json_source_prefix(&src.file));
                push_json_source_line(out, src.line);
            }
            None => out.push(b'}'),
        }
    }

    /// What precedes the value of field `i` in a row's JSON: `{"name":` for the first field,
    /// `,"name":` for the others.
    pub fn json_field_prefix(&self, i: usize, out: &mut Vec<u8>) {
        out.push(if i == 0 { b'{' } else { b',' });
        push_json_str(out, &self.fields[i].name);
        out.push(b':');
    }

    /// Decodes a Kafka value (JSON object) into typed values in schema order, checking types.
    /// Unknown keys other than `_source` are ignored; a missing optional field is null.
    pub fn decode_json(&self, bytes: &[u8]) -> Result<(Vec<Value>, Option<Source>), FieldError> {
        self.decode_json_reserving(bytes, 0)
    }

    /// [`decode_json`](Self::decode_json) with room for `extra` more values (the enrichment
    /// columns), so appending them does not reallocate and double the row's memory.
    pub fn decode_json_reserving(
        &self,
        bytes: &[u8],
        extra: usize,
    ) -> Result<(Vec<Value>, Option<Source>), FieldError> {
        let whole = |reason: String| FieldError {
            field: "(message)".into(),
            reason,
        };
        let mut object: serde_json::Map<String, serde_json::Value> =
            match serde_json::from_slice(bytes) {
                Ok(serde_json::Value::Object(map)) => map,
                Ok(other) => {
                    return Err(whole(format!(
                        "is JSON but not an object (found {})",
                        json_kind(&other)
                    )))
                }
                Err(e) => return Err(whole(format!("is not valid JSON: {e}"))),
            };
        let mut values = Vec::with_capacity(self.fields.len() + extra);
        for field in &self.fields {
            let fail = |reason: String| FieldError {
                field: field.name.clone(),
                reason,
            };
            let value = match object.remove(&field.name) {
                None | Some(serde_json::Value::Null) => {
                    if field.required {
                        return Err(fail("is required but missing or null".into()));
                    }
                    Value::Null
                }
                Some(json) => json_to_value(&field.ty, &json).ok_or_else(|| {
                    fail(format!(
                        "expected {}, found {}",
                        field.ty.describe(),
                        shorten(&json.to_string())
                    ))
                })?,
            };
            values.push(value);
        }
        let source = object.get("_source").and_then(|s| {
            Some(Source {
                file: s.get("file")?.as_str()?.to_string(),
                line: s.get("line")?.as_u64()?,
            })
        });
        Ok((values, source))
    }

    /// The Arrow fields of the schema, in order.
    pub fn arrow_fields(&self) -> Vec<ArrowField> {
        self.fields
            .iter()
            .map(|f| ArrowField::new(&f.name, f.ty.arrow_type(), true))
            .collect()
    }
}

/// Column names the pipeline adds to every output row; a schema may not use them.
pub const RESERVED_COLUMNS: &[&str] = &[
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
    "window_start",
    "window_end",
];

/// The TOML format of `--schema FILE`:
///
/// ```toml
/// name = "my_complaints"          # optional, shown in errors
/// key = "customer_id"             # optional: field used as the Kafka key
/// key_fallback = "customer_name"  # optional: used when the key field is null
/// event_time = "created_at"       # optional: timestamp or date field used as event time
///
/// [[fields]]
/// column = "Customer ID"          # CSV header text (matched ignoring case, accents, punctuation)
/// name = "customer_id"            # optional; default: the column in snake_case ASCII
/// type = "digits"                 # string|int|ordinal|float|decimal_comma|bool|date|timestamp|digits
/// width = 8                       # digits only: left-pad with zeros to this width
/// required = true                 # default false: blank becomes null
///
/// [[fields]]
/// column = "Created at"
/// type = "timestamp"
/// format = "%d/%m/%Y %H:%M:%S"     # chrono format; without an offset the time is UTC
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaFile {
    pub name: Option<String>,
    pub key: Option<String>,
    pub key_fallback: Option<String>,
    pub event_time: Option<String>,
    pub fields: Vec<FieldSpec>,
}

/// One `[[fields]]` entry of a [`SchemaFile`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub column: String,
    pub name: Option<String>,
    pub r#type: String,
    #[serde(default)]
    pub required: bool,
    pub format: Option<String>,
    pub width: Option<usize>,
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn json_to_value(ty: &FieldType, json: &serde_json::Value) -> Option<Value> {
    use serde_json::Value as J;
    Some(match (ty, json) {
        (FieldType::String, J::String(s)) => Value::Str(s.clone()),
        (FieldType::Digits { width }, J::String(s))
            if s.bytes().all(|b| b.is_ascii_digit()) && (*width == 0 || s.len() == *width) =>
        {
            Value::Str(s.clone())
        }
        (FieldType::Int { .. }, J::Number(n)) => Value::Int(n.as_i64()?),
        (FieldType::Float | FieldType::DecimalComma, J::Number(n)) => Value::Float(n.as_f64()?),
        (FieldType::Bool, J::Bool(b)) => Value::Bool(*b),
        (FieldType::Date { .. }, J::String(s)) => Value::Date(days_since_epoch(
            NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?,
        )),
        (FieldType::Timestamp { .. }, J::String(s)) => Value::Timestamp(parse_json_timestamp(s)?),
        _ => return None,
    })
}

/// A JSON timestamp: RFC 3339 (any offset), or what [`timestamp_to_string`] writes for the years
/// RFC 3339 cannot hold (before 0000 or after 9999: `-0001-01-01T00:00:00.000000Z`,
/// `+10000-01-01T00:00:00.000000Z`). Without the second form, a CSV timestamp such as
/// `01/01/-0001 00:00:00` would be sent by `produce` and dead-lettered by `consume` (found by
/// the `csv_rows` fuzz target).
pub(crate) fn parse_json_timestamp(s: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.with_timezone(&Utc).timestamp_micros());
    }
    let naive = NaiveDateTime::parse_from_str(s.strip_suffix('Z')?, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    Some(Utc.from_utc_datetime(&naive).timestamp_micros())
}

/// What a byte needs in a JSON string: 0 nothing, else the letter of its escape (`u`: `\u00XX`).
static JSON_ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[b'\n' as usize] = b'n';
    table[b'\r' as usize] = b'r';
    table[b'\t' as usize] = b't';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// The position of the first `"`, `\\` or control character in `bytes`: what a JSON string must
/// escape (the producer's `push_json_str` and the consumer's `flat_json` scan both use it).
/// Eight bytes at a time, by the classic "has a zero byte" test: exact for the lowest flagged
/// byte, which is all we use.
pub fn first_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let flagged = |word: u64| {
        let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
        zero(word ^ (ONES * u64::from(b'"')))
            | zero(word ^ (ONES * u64::from(b'\\')))
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
    };
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        let hits = flagged(word);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..]
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

/// Appends `s` as a JSON string: runs that need no escape (almost all text) are copied whole.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // Clean text is copied up to the next byte to escape, found eight bytes at a time (a
    // byte-at-a-time table walk was 3–4 % of produce's CPU).
    let mut start = 0;
    while let Some(found) = first_special(&bytes[start..]) {
        let i = start + found;
        let b = bytes[i];
        let escape = JSON_ESCAPE[b as usize];
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            b'u' => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            letter => out.extend_from_slice(&[b'\\', letter]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// `,"_source":{"file":"<file>","line":` — the part of `_source` that is the same for every row
/// of a file (the producer computes it once per file).
pub fn json_source_prefix(file: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(file.len() + 32);
    out.extend_from_slice(b",\"_source\":{\"file\":");
    push_json_str(&mut out, file);
    out.extend_from_slice(b",\"line\":");
    out
}

/// The rest of `_source` after [`json_source_prefix`]: the line, and the closing braces.
pub fn push_json_source_line(out: &mut Vec<u8>, line: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(line).as_bytes());
    out.extend_from_slice(b"}}");
}

/// Appends the JSON of one typed value.
pub fn push_cell_json(out: &mut Vec<u8>, cell: &Cell<'_>) {
    match *cell {
        Cell::Null => out.extend_from_slice(b"null"),
        Cell::Str(s) => push_json_str(out, s),
        Cell::Digits { digits, width } => {
            // ASCII digits only (checked by parse_cell_ref): nothing to escape.
            out.push(b'"');
            out.resize(out.len() + width.saturating_sub(digits.len()), b'0');
            out.extend_from_slice(digits.as_bytes());
            out.push(b'"');
        }
        Cell::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        Cell::Float(f) if f.is_finite() => {
            out.extend_from_slice(ryu::Buffer::new().format_finite(f).as_bytes())
        }
        Cell::Float(_) => out.extend_from_slice(b"null"),
        Cell::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Cell::Date(d) => push_json_str(out, &date_to_string(d)),
        Cell::Timestamp(t) => push_json_str(out, &timestamp_to_string(t)),
    }
}

pub(crate) fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}…")
    }
}

fn parse_finite(text: &str) -> Option<f64> {
    text.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// `str::trim`, without decoding characters when both ends are ASCII and not blank (most
/// cells): a UTF-8 string whose first and last bytes are below 0x80 starts and ends with those
/// ASCII characters, so `trim` would return it whole.
fn trim(raw: &str) -> &str {
    match raw.as_bytes() {
        [first, .., last] | [first @ last]
            if first.is_ascii_graphic() && last.is_ascii_graphic() =>
        {
            raw
        }
        _ => raw.trim(),
    }
}

/// `54,79` -> 54.79; `1.234,5` -> 1234.5 (dots accepted only as thousands groups of three);
/// `54` -> 54.0. Anything else (`54.79`, `1.23,4`, `abc`) is rejected rather than guessed.
pub fn parse_decimal_comma(text: &str) -> Option<f64> {
    let (int_part, frac_part) = match text.split_once(',') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    let (sign, digits) = match int_part.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", int_part.strip_prefix('+').unwrap_or(int_part)),
    };
    let mut plain = String::with_capacity(text.len());
    plain.push_str(sign);
    if digits.contains('.') {
        let groups: Vec<&str> = digits.split('.').collect();
        let first_ok = (1..=3).contains(&groups[0].len());
        let rest_ok = groups[1..].iter().all(|g| g.len() == 3);
        if !first_ok || !rest_ok {
            return None;
        }
        groups.iter().for_each(|g| plain.push_str(g));
    } else {
        plain.push_str(digits);
    }
    if plain.trim_start_matches('-').is_empty()
        || !plain
            .trim_start_matches('-')
            .bytes()
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if let Some(frac) = frac_part {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        plain.push('.');
        plain.push_str(frac);
    }
    parse_finite(&plain)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_lowercase().as_str() {
        "true" | "1" | "sim" | "s" | "yes" | "y" | "t" | "verdadeiro" => Some(true),
        "false" | "0" | "não" | "nao" | "n" | "no" | "f" | "falso" => Some(false),
        _ => None,
    }
}

fn parse_timestamp(text: &str, format: &str) -> Option<i64> {
    if let Ok(dt) = DateTime::parse_from_str(text, format) {
        return Some(dt.with_timezone(&Utc).timestamp_micros());
    }
    let naive = NaiveDateTime::parse_from_str(text, format).ok()?;
    Some(Utc.from_utc_datetime(&naive).timestamp_micros())
}

pub(crate) fn days_since_epoch(d: NaiveDate) -> i32 {
    (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid epoch")).num_days() as i32
}

/// `19000` -> `2022-01-08`.
pub fn date_to_string(days: i32) -> String {
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid epoch");
    (epoch + chrono::Duration::days(i64::from(days)))
        .format("%Y-%m-%d")
        .to_string()
}

/// UTC microseconds -> RFC 3339 with microseconds and `Z`.
pub fn timestamp_to_string(micros: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => micros.to_string(),
    }
}

/// An Arrow array of `ty` from typed values (`None` and values of another type become nulls:
/// callers build the values for that type, e.g. the enrichment table from MySQL columns).
pub fn values_to_array<'a>(
    ty: &FieldType,
    values: impl Iterator<Item = Option<&'a Value>>,
) -> arrow::array::ArrayRef {
    use arrow::array::{
        BooleanBuilder, Date32Builder, Float64Builder, Int64Builder, StringBuilder,
        TimestampMicrosecondBuilder,
    };
    use std::sync::Arc;
    macro_rules! build {
        ($builder:expr, $variant:ident) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    Some(Value::$variant(x)) => b.append_value(x.clone()),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish()) as arrow::array::ArrayRef
        }};
    }
    match ty {
        FieldType::String | FieldType::Digits { .. } => build!(StringBuilder::new(), Str),
        FieldType::Int { .. } => build!(Int64Builder::new(), Int),
        FieldType::Float | FieldType::DecimalComma => build!(Float64Builder::new(), Float),
        FieldType::Bool => build!(BooleanBuilder::new(), Bool),
        FieldType::Date { .. } => build!(Date32Builder::new(), Date),
        FieldType::Timestamp { .. } => build!(
            TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            Timestamp
        ),
    }
}

/// Row `row` of an Arrow array of `ty` as a [`Value`]: the inverse of [`values_to_array`] (a
/// null, or an array of another type, is [`Value::Null`]).
pub fn array_value(ty: &FieldType, array: &dyn arrow::array::Array, row: usize) -> Value {
    use arrow::array::AsArray;
    use arrow::datatypes::{Date32Type, Float64Type, Int64Type, TimestampMicrosecondType};
    if row >= array.len() || array.is_null(row) {
        return Value::Null;
    }
    let value = match ty {
        FieldType::String | FieldType::Digits { .. } => array
            .as_string_opt::<i32>()
            .map(|a| Value::Str(a.value(row).to_string())),
        FieldType::Int { .. } => array
            .as_primitive_opt::<Int64Type>()
            .map(|a| Value::Int(a.value(row))),
        FieldType::Float | FieldType::DecimalComma => array
            .as_primitive_opt::<Float64Type>()
            .map(|a| Value::Float(a.value(row))),
        FieldType::Bool => array.as_boolean_opt().map(|a| Value::Bool(a.value(row))),
        FieldType::Date { .. } => array
            .as_primitive_opt::<Date32Type>()
            .map(|a| Value::Date(a.value(row))),
        FieldType::Timestamp { .. } => array
            .as_primitive_opt::<TimestampMicrosecondType>()
            .map(|a| Value::Timestamp(a.value(row))),
    };
    value.unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BCB_HEADER: &str = "Ano;Trimestre;Categoria;Tipo;CNPJ IF;Instituição financeira;Índice;Quantidade de reclamações reguladas procedentes;Quantidade de reclamações reguladas - outras;Quantidade de reclamações não reguladas;Quantidade total de reclamações;Quantidade total de clientes – CCS e SCR;Quantidade de clientes – CCS;Quantidade de clientes – SCR;";

    #[test]
    fn normalizes_headers_to_snake_case_ascii() {
        assert_eq!(
            normalize_name("Instituição financeira"),
            "instituicao_financeira"
        );
        assert_eq!(
            normalize_name("Quantidade total de clientes – CCS e SCR"),
            "quantidade_total_de_clientes_ccs_e_scr"
        );
        assert_eq!(normalize_name("  Índice "), "indice");
        assert_eq!(normalize_name("CNPJ IF"), "cnpj_if");
        assert_eq!(
            normalize_name("Quantidade de reclamações reguladas - outras"),
            "quantidade_de_reclamacoes_reguladas_outras"
        );
    }

    #[test]
    fn builtin_schema_matches_the_real_header_with_trailing_delimiter() {
        let schema = Schema::banco_central();
        let header: Vec<&str> = BCB_HEADER.split(';').collect();
        let positions = schema.match_header("f.csv", &header).unwrap();
        assert_eq!(positions, (0..14).collect::<Vec<_>>());
        assert_eq!(schema.fields[schema.key_field.unwrap()].name, "cnpj_if");
    }

    #[test]
    fn header_mismatch_names_file_and_column() {
        let schema = Schema::banco_central();
        let header: Vec<&str> = BCB_HEADER
            .replace("Tipo", "Type")
            .leak()
            .split(';')
            .collect();
        let err = schema
            .match_header("x.csv", &header)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.csv") && err.contains("`Type`"), "{err}");
        let short: Vec<&str> = vec!["Ano", "Trimestre"];
        let err = schema
            .match_header("y.csv", &short)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("missing") && err.contains("Categoria"),
            "{err}"
        );
    }

    #[test]
    fn parses_bcb_cells() {
        let s = Schema::banco_central();
        let idx = |n: &str| s.fields.iter().position(|f| f.name == n).unwrap();
        assert_eq!(s.parse_cell(idx("trimestre"), "4º").unwrap(), Value::Int(4));
        assert_eq!(
            s.parse_cell(idx("indice"), "54,79").unwrap(),
            Value::Float(54.79)
        );
        assert_eq!(s.parse_cell(idx("indice"), " ").unwrap(), Value::Null);
        assert_eq!(
            s.parse_cell(idx("cnpj_if"), "360305").unwrap(),
            Value::Str("00360305".into())
        );
        assert_eq!(s.parse_cell(idx("cnpj_if"), " ").unwrap(), Value::Null);
        let err = s.parse_cell(idx("ano"), "abc").unwrap_err();
        assert_eq!(err.field, "ano");
        assert!(err.reason.contains("`abc` is not an integer"));
        assert!(s
            .parse_cell(idx("ano"), " ")
            .unwrap_err()
            .reason
            .contains("required"));
        assert!(s.parse_cell(idx("cnpj_if"), "12345678901").is_err());
    }

    #[test]
    fn decimal_comma_rules() {
        assert_eq!(parse_decimal_comma("1.234,5"), Some(1234.5));
        assert_eq!(parse_decimal_comma("-0,5"), Some(-0.5));
        assert_eq!(parse_decimal_comma("12"), Some(12.0));
        assert_eq!(parse_decimal_comma("54.79"), None);
        assert_eq!(parse_decimal_comma("1.23,4"), None);
        assert_eq!(parse_decimal_comma(","), None);
        assert_eq!(parse_decimal_comma("1,2,3"), None);
    }

    #[test]
    fn json_round_trip_keeps_types_and_utf8() {
        let s = Schema::banco_central();
        let mut values = vec![Value::Null; s.fields.len()];
        values[0] = Value::Int(2021);
        values[1] = Value::Int(4);
        values[2] = Value::Str("Demais bancos, financeiras".into());
        values[3] = Value::Str("Banco/financeira".into());
        values[4] = Value::Str("00360305".into());
        values[5] = Value::Str("CAIXA ECONÔMICA \"FEDERAL\"\n".into());
        values[6] = Value::Float(54.79);
        values[7] = Value::Int(3);
        let src = Source {
            file: "a.csv".into(),
            line: 7,
        };
        let mut json = String::new();
        s.write_json(&values, Some(&src), &mut json);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            parsed["instituicao_financeira"],
            "CAIXA ECONÔMICA \"FEDERAL\"\n"
        );
        assert_eq!(parsed["_source"]["line"], 7);
        let (back, source) = s.decode_json(json.as_bytes()).unwrap();
        assert_eq!(back, values);
        assert_eq!(source, Some(src));
    }

    #[test]
    fn decode_json_rejects_wrong_types_and_missing_required() {
        let s = Schema::banco_central();
        assert!(s
            .decode_json(b"not json")
            .unwrap_err()
            .reason
            .contains("not valid JSON"));
        assert!(s
            .decode_json(b"[1]")
            .unwrap_err()
            .reason
            .contains("not an object"));
        let e = s
            .decode_json(br#"{"ano":"2021","trimestre":1,"categoria":"c","tipo":"t","instituicao_financeira":"x"}"#)
            .unwrap_err();
        assert_eq!(e.field, "ano");
        let e = s
            .decode_json(br#"{"ano":2021,"trimestre":1,"categoria":"c","tipo":"t"}"#)
            .unwrap_err();
        assert_eq!(e.field, "instituicao_financeira");
    }

    #[test]
    fn toml_schema_with_event_time() {
        let text = r#"
            name = "custom"
            key = "id"
            event_time = "when"
            [[fields]]
            column = "ID"
            type = "digits"
            width = 4
            required = true
            [[fields]]
            column = "When"
            type = "timestamp"
            format = "%d/%m/%Y %H:%M:%S"
            [[fields]]
            column = "Ativo?"
            type = "bool"
        "#;
        let s = Schema::from_toml_str(text, "custom.toml").unwrap();
        assert_eq!(s.fields[2].name, "ativo");
        assert_eq!(s.parse_cell(0, "12").unwrap(), Value::Str("0012".into()));
        let ts = s.parse_cell(1, "25/11/2026 14:00:30").unwrap();
        assert_eq!(
            s.event_time_ms(&[Value::Null, ts.clone(), Value::Null]),
            Some(1_795_615_230_000)
        );
        assert_eq!(s.parse_cell(2, "Sim").unwrap(), Value::Bool(true));
        let mut json = String::new();
        s.write_json(
            &[Value::Str("0012".into()), ts.clone(), Value::Bool(false)],
            None,
            &mut json,
        );
        assert!(json.contains("\"2026-11-25T14:00:30.000000Z\""), "{json}");
        let (back, _) = s.decode_json(json.as_bytes()).unwrap();
        assert_eq!(back[1], ts);
    }

    #[test]
    fn floats_survive_json_bit_for_bit() {
        // Regression (fuzzing, json_message): serde_json's default float parser may be off by one
        // unit in the last place for 17-digit numbers (7777777777777777.0 came back as
        // ...778.0); the `float_roundtrip` feature makes parsing exact.
        let s = Schema::from_toml_str("[[fields]]\ncolumn='x'\ntype='float'", "f.toml").unwrap();
        for x in [
            7_777_777_777_777_777.0,
            0.1 + 0.2,
            1.0 / 3.0,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            -123_456.789_012_345_67,
        ] {
            let mut json = String::new();
            s.write_json(&[Value::Float(x)], None, &mut json);
            let (back, _) = s.decode_json(json.as_bytes()).unwrap();
            assert_eq!(back, vec![Value::Float(x)], "{json}");
        }
    }

    #[test]
    fn timestamps_outside_rfc3339_years_survive_json() {
        // Regression (fuzzing): years before 0000 and after 9999 are written as `-0001-…` and
        // `+10000-…`, which RFC 3339 parsers reject; the decoder must read them back.
        let s = Schema::from_toml_str(
            "[[fields]]\ncolumn='when'\ntype='timestamp'\nformat='%d/%m/%Y %H:%M:%S %z'",
            "t.toml",
        )
        .unwrap();
        for text in [
            "01/01/-0001 00:00:00 +0000",
            "31/12/9999 23:59:59 -0100",
            "01/01/0000 00:00:00 +0130",
            "25/11/2026 14:00:30 +0000",
        ] {
            let value = s.parse_cell(0, text).unwrap();
            let mut json = String::new();
            s.write_json(std::slice::from_ref(&value), None, &mut json);
            let (back, _) = s
                .decode_json(json.as_bytes())
                .unwrap_or_else(|e| panic!("{text} -> {json}: {e}"));
            assert_eq!(back, vec![value], "{text} -> {json}");
        }
        // RFC 3339 with an offset that moves the instant past 9999 is accepted and round-trips.
        let (v, _) = s
            .decode_json(br#"{"when":"9999-12-31T23:30:00-01:00"}"#)
            .unwrap();
        let mut json = String::new();
        s.write_json(&v, None, &mut json);
        assert!(json.contains("+10000-01-01T00:30:00"), "{json}");
        assert_eq!(s.decode_json(json.as_bytes()).unwrap().0, v);
    }

    #[test]
    fn toml_schema_errors_are_specific() {
        let e = Schema::from_toml_str("[[fields]]\ncolumn='a'\ntype='money'", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.toml") && e.contains("money"), "{e}");
        let e = Schema::from_toml_str("key='zz'\n[[fields]]\ncolumn='a'\ntype='int'", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("zz"), "{e}");
        let e = Schema::from_toml_str("[[fields]]\ncolumn='Kafka offset'\ntype='int'", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("reserved"), "{e}");
    }

    proptest! {
        #[test]
        fn json_str_escapes_exactly_what_the_table_says(s in "[a\"\\\\\u{0}-\u{1f} ~\u{7f}\u{e7}\u{20ac}]{0,40}") {
            let mut want = vec![b'"'];
            for &b in s.as_bytes() {
                match JSON_ESCAPE[b as usize] {
                    0 => want.push(b),
                    b'u' => want.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
                    letter => want.extend_from_slice(&[b'\\', letter]),
                }
            }
            want.push(b'"');
            let mut got = Vec::new();
            push_json_str(&mut got, &s);
            prop_assert_eq!(&got, &want);
            let back: String = serde_json::from_slice(&got).expect("valid JSON");
            prop_assert_eq!(back, s);
        }

        #[test]
        fn trim_is_str_trim(s in "[ \t\u{a0}\u{2003}a-z0-9,\u{e7}\u{1}]{0,12}") {
            prop_assert_eq!(trim(&s), s.trim());
        }

        #[test]
        fn any_string_survives_json(s in "\\PC*") {
            let schema = Schema::banco_central();
            let mut values = vec![Value::Null; schema.fields.len()];
            values[0] = Value::Int(1);
            values[1] = Value::Int(1);
            values[2] = Value::Str(s.clone());
            values[3] = Value::Str(s.clone());
            values[5] = Value::Str(s);
            let mut json = String::new();
            schema.write_json(&values, None, &mut json);
            let (back, _) = schema.decode_json(json.as_bytes()).unwrap();
            prop_assert_eq!(back, values);
        }

        #[test]
        fn any_finite_float_survives_json(bits in any::<u64>()) {
            let x = f64::from_bits(bits);
            prop_assume!(x.is_finite());
            let s = Schema::from_toml_str("[[fields]]\ncolumn='x'\ntype='float'", "f.toml").unwrap();
            let mut json = String::new();
            s.write_json(&[Value::Float(x)], None, &mut json);
            let (back, _) = s.decode_json(json.as_bytes()).unwrap();
            prop_assert_eq!(back, vec![Value::Float(x)]);
        }

        #[test]
        fn decimal_comma_matches_plain_parse(int in 0u32..1_000_000, frac in 0u32..100) {
            let text = format!("{int},{frac:02}");
            let expected: f64 = format!("{int}.{frac:02}").parse().unwrap();
            prop_assert_eq!(parse_decimal_comma(&text), Some(expected));
        }
    }
}

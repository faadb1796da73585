//! What both fuzz targets share: the schemas under test and the round-trip oracle.
//!
//! Oracle: a row the CSV decoder accepts, or a message the JSON decoder accepts, must come back
//! identical through `Schema::write_json` + `Schema::decode_json`. That is the contract between
//! `app produce` (CSV -> JSON) and `app consume` (JSON -> typed values): whatever the producer
//! sends, the consumer must read back as the same values, never dead-letter it.

use reclamacoes::schema::{Schema, Source, Value};

/// A schema with one field of every type, so every cell parser and JSON decoder is reached.
/// Header: `id;when;day;flag;n;x;dc;ord;name`.
pub const ALL_TYPES_TOML: &str = r#"
name = "all_types"
key = "id"
key_fallback = "name"
event_time = "when"
[[fields]]
column = "id"
type = "digits"
width = 6
required = true
[[fields]]
column = "when"
type = "timestamp"
format = "%d/%m/%Y %H:%M:%S"
[[fields]]
column = "day"
type = "date"
format = "%Y-%m-%d"
[[fields]]
column = "flag"
type = "bool"
[[fields]]
column = "n"
type = "int"
[[fields]]
column = "x"
type = "float"
[[fields]]
column = "dc"
type = "decimal_comma"
[[fields]]
column = "ord"
type = "ordinal"
[[fields]]
column = "name"
type = "string"
"#;

/// The built-in Banco Central schema and the all-types schema.
pub fn schemas() -> Vec<Schema> {
    vec![
        Schema::banco_central(),
        Schema::from_toml_str(ALL_TYPES_TOML, "all_types.toml").expect("the fuzz schema is valid"),
    ]
}

/// Asserts that `values` survive JSON exactly (with `source`), and that the event time and key
/// can be computed without panicking.
pub fn assert_round_trip(schema: &Schema, values: &[Value], source: Option<&Source>) {
    assert_eq!(values.len(), schema.fields.len(), "one value per field");
    for (field, value) in schema.fields.iter().zip(values) {
        assert!(
            !(field.required && *value == Value::Null),
            "required field {} is null",
            field.name
        );
    }
    let mut json = String::new();
    schema.write_json(values, source, &mut json);
    let (back, back_source) = match schema.decode_json(json.as_bytes()) {
        Ok(v) => v,
        Err(e) => panic!("the consumer cannot read what the producer wrote: {e}\njson: {json}"),
    };
    assert_eq!(back, values, "values changed through JSON: {json}");
    assert_eq!(
        back_source.as_ref(),
        source,
        "_source changed through JSON: {json}"
    );
    let _ = schema.key_of(values);
    let _ = schema.event_time_ms(values);
}

/// The consumer's decoder (`consume::decode::Decoder`, what `app consume` runs) on one message:
/// `Ok(values)` when it is a row, `Err(reason)` when it is a dead letter.
pub fn consumer_decode(schema: &Schema, value: &[u8]) -> Result<Vec<Value>, String> {
    use reclamacoes::consume::decode::{row_values, DecodeConfig, Decoder, RawRecord};
    // The consumer decodes whole batches; the fuzzer gives it a batch of one.
    use reclamacoes::enrich::{OnMiss, ReferenceTable};
    use reclamacoes::output::OutputSchema;
    use std::sync::Arc;
    let table = ReferenceTable::build("ref_", vec![("k".into(), reclamacoes::schema::FieldType::String)], vec![]);
    let output = OutputSchema::new(schema, &table.columns).expect("valid columns");
    let decoder = Decoder::new(
        DecodeConfig {
            schema: Arc::new(schema.clone()),
            event_time_field: None,
            join_field: 0,
            on_miss: OnMiss::Null,
            max_future_ms: None,
            window_ms: 60_000,
        },
        &output,
        "fuzz",
    );
    let record = RawRecord { offset: 0, timestamp_ms: 0, key: None, value: Some(value), refused: None };
    let batch = decoder
        .decode(0, std::iter::once(record), &table, 0)
        .expect("decoding never fails as a whole");
    if batch.rows.num_rows() == 1 {
        Ok(row_values(schema, &batch.rows, 0))
    } else {
        Err(batch.dead_letter_errors().remove(0))
    }
}

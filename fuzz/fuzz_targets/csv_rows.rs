//! The CSV row decoder: any bytes as a whole input file (encoding and delimiter detected as
//! `app produce` does), read with the built-in and the all-types schema. Must never panic;
//! every accepted row must survive the JSON hand-over to the consumer unchanged; the counts
//! must agree with what was reported.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use reclamacoes::csv_source::{for_each_row_in_bytes, SourceConfig};
use reclamacoes::schema::Source;

fuzz_target!(|data: &[u8]| {
    for schema in fuzz_common::schemas() {
        let config = SourceConfig {
            schema: Arc::new(schema),
            encoding: None,
            delimiter: None,
        };
        let (mut rows, mut rejects) = (0u64, 0u64);
        let mut last_line = 0u64;
        let result = for_each_row_in_bytes(data, "fuzz.csv", &config, |row| {
            match row {
                Ok(row) => {
                    rows += 1;
                    assert!(row.line > last_line, "line numbers increase");
                    last_line = row.line;
                    let source = Source {
                        file: "fuzz.csv".into(),
                        line: row.line,
                    };
                    fuzz_common::assert_round_trip(&config.schema, &row.values, Some(&source));
                }
                Err(reject) => {
                    rejects += 1;
                    assert_eq!(reject.file, "fuzz.csv");
                    assert!(!reject.reason.is_empty(), "a reject says why");
                    // A reject must be serializable for the rejects file.
                    serde_json::to_string(&reject).expect("reject serializes");
                }
            }
            true
        });
        if let Ok(stats) = result {
            assert_eq!(stats.rows, rows);
            assert_eq!(stats.rejected, rejects);
        }
    }
});

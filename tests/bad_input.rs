//! Bad input, table-driven: malformed CSV files through the CSV decoder (the library, exactly as
//! `app produce` reads a file), and malformed Kafka messages through the real `app consume`
//! against the real broker. Every case has a written expectation: rejected with its location and
//! reason, or accepted as documented. Never a crash, never a silent drop: every row or message is
//! either accepted or reported.

mod faultkit;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use faultkit::common;
use reclamacoes::csv_source::{
    for_each_row_in_bytes, CsvFile, Reject, Row, SourceConfig, SourceError,
};
use reclamacoes::kafka::Compression;
use reclamacoes::schema::{Schema, Source, Value};
use rskafka::record::Record;

// ---------------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------------

const HEADER: &str = faultkit::BCB_HEADER;

/// The fields of a valid data row.
fn fields() -> Vec<String> {
    [
        "2025",
        "1º",
        "Demais bancos, financeiras",
        "Banco/financeira",
        "00360305",
        "BANCO AURORA S.A.",
        "12,34",
        "5",
        "6",
        "7",
        "18",
        "120000",
        "100000",
        "20000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A data row with field `i` replaced by `v` (`;` separated, trailing `;`).
fn row_with(changes: &[(usize, &str)]) -> String {
    let mut f = fields();
    for (i, v) in changes {
        f[*i] = v.to_string();
    }
    format!("{};", f.join(";"))
}

fn row() -> String {
    row_with(&[])
}

fn cp1252(text: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(text);
    assert!(!unmappable, "not representable in cp1252: {text}");
    bytes.into_owned()
}

fn utf16le(text: &str, bom: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if bom {
        out.extend_from_slice(&[0xFF, 0xFE]);
    }
    for unit in text.encode_utf16() {
        out.extend_from_slice(&unit.to_le_bytes());
    }
    out
}

/// A file: header line, then `rows` each followed by `\n`, encoded in cp1252.
fn file(rows: &[String]) -> Vec<u8> {
    let mut text = format!("{HEADER}\n");
    for r in rows {
        text.push_str(r);
        text.push('\n');
    }
    cp1252(&text)
}

#[derive(Debug)]
enum Expect {
    /// Read to the end: `rows` accepted, these rejects (line, text the reason contains).
    Rows {
        rows: u64,
        rejects: &'static [(u64, &'static str)],
    },
    /// The header does not match: nothing is read (the message contains the text).
    Header(&'static str),
    /// No header line at all: an empty file, 0 rows.
    Empty,
}

struct CsvCase {
    name: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
    /// Extra checks on the accepted rows.
    check: Option<fn(&[Row])>,
}

fn case(name: &'static str, bytes: Vec<u8>, expect: Expect) -> CsvCase {
    CsvCase {
        name,
        bytes,
        expect,
        check: None,
    }
}

fn rows(rows: u64, rejects: &'static [(u64, &'static str)]) -> Expect {
    Expect::Rows { rows, rejects }
}

fn csv_cases() -> Vec<CsvCase> {
    let two = || vec![row(), row_with(&[(5, "BANCO BOREAL S.A.")])];
    let mut cases = vec![
        case("valid cp1252 (baseline)", file(&two()), rows(2, &[])),
        case(
            "UTF-8 without BOM",
            format!("{HEADER}\n{}\n{}\n", row(), row()).into_bytes(),
            rows(2, &[]),
        ),
        case(
            "UTF-8 with BOM",
            format!("\u{feff}{HEADER}\n{}\n", row()).into_bytes(),
            rows(1, &[]),
        ),
        // The BOM says UTF-8 but the body is cp1252: the BOM wins, the invalid bytes become
        // U+FFFD, and the header (with ç, ã, Í) no longer matches: a header error, not garbage.
        case(
            "UTF-8 BOM on a cp1252 body",
            [&b"\xEF\xBB\xBF"[..], &file(&two())].concat(),
            Expect::Header("is not in the schema"),
        ),
        // A UTF-16 BOM is honoured (encoding_rs BOM sniffing): read correctly.
        case(
            "UTF-16LE with BOM",
            utf16le(&format!("{HEADER}\r\n{}\r\n", row()), true),
            rows(1, &[]),
        ),
        case(
            "UTF-16LE without BOM",
            utf16le(&format!("{HEADER}\r\n{}\r\n", row()), false),
            Expect::Header("header does not match"),
        ),
        case(
            "CRLF line ends",
            cp1252(&format!("{HEADER}\r\n{}\r\n{}\r\n", row(), row())),
            rows(2, &[]),
        ),
        case(
            "CR-only line ends (classic Mac)",
            cp1252(&format!("{HEADER}\r{}\r{}\r", row(), row())),
            rows(2, &[]),
        ),
        case(
            "no newline at the end of the file",
            cp1252(&format!("{HEADER}\n{}\n{}", row(), row())),
            rows(2, &[]),
        ),
        case(
            "empty lines between rows (skipped, line numbers kept)",
            cp1252(&format!("{HEADER}\n\n{}\n\n\n{}\n\n", row(), row())),
            rows(2, &[]),
        ),
        case(
            "a line of only spaces",
            file(&[row(), "   ".into(), row()]),
            rows(2, &[(3, "expected 14 columns, found 1")]),
        ),
        case(
            "ragged: a short row",
            file(&[row(), "2025;1º;Cat;Banco/financeira;00360305".into(), row()]),
            rows(2, &[(3, "expected 14 columns, found 5")]),
        ),
        case(
            "ragged: a long row",
            file(&[row(), format!("{}9;extra;", row()), row()]),
            rows(2, &[(3, "expected 14 columns, found 16")]),
        ),
        case(
            "a row without the trailing delimiter",
            file(&[row().trim_end_matches(';').to_string()]),
            rows(1, &[]),
        ),
        case(
            "a row with two trailing delimiters",
            file(&[format!("{};", row())]),
            rows(0, &[(2, "expected 14 columns, found 15")]),
        ),
        case(
            "quoted field holding the delimiter, quotes and a newline",
            file(&[
                row_with(&[(2, "\"Cat; com \"\"aspas\"\"\ne quebra\"")]),
                row(),
            ]),
            rows(2, &[]),
        ),
        // The quote runs to the end of the file: one record swallows the rest, which then has
        // too few columns; it is rejected at the line where it starts.
        case(
            "unterminated quote",
            file(&[row(), row_with(&[(2, "\"never closed")]), row()]),
            rows(1, &[(3, "columns")]),
        ),
        case(
            "a quote inside an unquoted field (kept literally)",
            file(&[row_with(&[(5, "BANCO \"AURORA\" S.A.")])]),
            rows(1, &[]),
        ),
        case(
            "a 5 MB field (accepted here; produce rejects rows over --batch-bytes)",
            file(&[row_with(&[(5, &"X".repeat(5 << 20))])]),
            rows(1, &[]),
        ),
        case(
            "a 10 MB line without any delimiter",
            file(&[row(), "Y".repeat(10 << 20), row()]),
            rows(2, &[(3, "expected 14 columns, found 1")]),
        ),
        case(
            "binary junk line",
            [
                file(&[row()]),
                (0u8..=255)
                    .filter(|b| *b != b'\n' && *b != b'\r' && *b != b'"')
                    .collect(),
                b"\n".to_vec(),
                cp1252(&row()),
                b"\n".to_vec(),
            ]
            .concat(),
            rows(2, &[(3, "columns")]),
        ),
        case(
            "NUL bytes inside a field (kept; JSON escapes them)",
            file(&[row_with(&[(5, "BANCO\0NUL")])]),
            rows(1, &[]),
        ),
        case(
            "Ctrl-Z (DOS end-of-file marker) on the last line",
            [file(&[row()]), vec![0x1A]].concat(),
            rows(1, &[(3, "expected 14 columns, found 1")]),
        ),
        case(
            "wrong header: Type instead of Tipo",
            cp1252(&format!("{}\n{}\n", HEADER.replace("Tipo", "Type"), row())),
            Expect::Header("`Type`"),
        ),
        case(
            "header with a duplicated column",
            cp1252(&format!("{}Ano;\n{}\n", HEADER, row())),
            Expect::Header("appears twice"),
        ),
        case(
            "header with an unknown extra column",
            cp1252(&format!("{}Extra;\n{}9;\n", HEADER, row())),
            Expect::Header("`Extra` is not in the schema"),
        ),
        case(
            "header missing a column",
            cp1252(&format!("{}\n", HEADER.replace("Índice;", ""))),
            Expect::Header("`Índice` is missing"),
        ),
        case(
            "header in upper case without accents (matched by normalized name)",
            cp1252(&format!(
                "{}\n{}\n",
                HEADER
                    .to_uppercase()
                    .replace('Ç', "C")
                    .replace('Ã', "A")
                    .replace('Í', "I")
                    .replace('Õ', "O"),
                row()
            )),
            rows(1, &[]),
        ),
        case("header only", file(&[]), rows(0, &[])),
        case("empty file (0 bytes)", Vec::new(), Expect::Empty),
        case("only a UTF-8 BOM", b"\xEF\xBB\xBF".to_vec(), Expect::Empty),
        case(
            "thousands separator: 1.234,56 in Índice, 120.000 in an integer",
            file(&[row_with(&[(6, "1.234,56")]), row_with(&[(11, "120.000")])]),
            rows(1, &[(3, "quantidade_total_de_clientes_ccs_e_scr")]),
        ),
        case(
            "decimal point in Índice",
            file(&[row_with(&[(6, "12.5")])]),
            rows(
                0,
                &[(2, "`indice`: `12.5` is not a number with a decimal comma")],
            ),
        ),
        case(
            "NaN and inf in Índice",
            file(&[row_with(&[(6, "NaN")]), row_with(&[(6, "inf")])]),
            rows(0, &[(2, "`indice`"), (3, "`indice`")]),
        ),
        case(
            "a 400-digit Índice (would overflow to infinity)",
            file(&[row_with(&[(6, &"9".repeat(400))])]),
            rows(0, &[(2, "`indice`")]),
        ),
        case(
            "integer overflow in Ano",
            file(&[row_with(&[(0, "99999999999999999999")])]),
            rows(0, &[(2, "`ano`")]),
        ),
        case(
            "negative count (accepted: no range rule)",
            file(&[row_with(&[(7, "-5")])]),
            rows(1, &[]),
        ),
        case(
            "Trimestre as 4ª and 4° (accepted), IV (rejected)",
            file(&[
                row_with(&[(1, "4ª")]),
                row_with(&[(1, "4°")]),
                row_with(&[(1, "IV")]),
            ]),
            rows(2, &[(4, "`trimestre`")]),
        ),
        case(
            "CNPJ: 6 digits padded, 9 digits and punctuation rejected",
            file(&[
                row_with(&[(4, "360305")]),
                row_with(&[(4, "123456789")]),
                row_with(&[(4, "00.360.305")]),
            ]),
            rows(1, &[(3, "`cnpj_if`"), (4, "`cnpj_if`")]),
        ),
        case(
            "required Ano blank",
            file(&[row_with(&[(0, " ")])]),
            rows(0, &[(2, "`ano`: is required but blank")]),
        ),
        case(
            "spaces around numbers (trimmed)",
            file(&[row_with(&[(0, " 2025 "), (6, " 12,5 ")])]),
            rows(1, &[]),
        ),
        case(
            "tab-separated file (detected)",
            cp1252(&format!(
                "{}\n{}\n",
                HEADER.trim_end_matches(';').replace(';', "\t"),
                fields().join("\t")
            )),
            rows(1, &[]),
        ),
        case(
            "comma-separated file with quoted decimal commas (detected)",
            cp1252(&format!(
                "{}\n{}\n",
                HEADER.trim_end_matches(';').replace(';', ","),
                fields()
                    .iter()
                    .map(|f| if f.contains(',') {
                        format!("\"{f}\"")
                    } else {
                        f.clone()
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            rows(1, &[]),
        ),
        case(
            "mixed line ends",
            cp1252(&format!("{HEADER}\r\n{}\n{}\r{}\r\n", row(), row(), row())),
            rows(3, &[]),
        ),
    ];
    cases.push(CsvCase {
        name: "columns in another order (matched by name)",
        bytes: {
            let mut header: Vec<&str> = HEADER.trim_end_matches(';').split(';').collect();
            header.swap(0, 5);
            let mut f = fields();
            f.swap(0, 5);
            cp1252(&format!("{}\n{}\n", header.join(";"), f.join(";")))
        },
        expect: rows(1, &[]),
        check: Some(|rows| {
            assert_eq!(rows[0].values[0], Value::Int(2025));
            assert_eq!(rows[0].values[5], Value::Str("BANCO AURORA S.A.".into()));
        }),
    });
    cases.push(CsvCase {
        name: "line numbers count the newlines inside quoted fields",
        bytes: file(&[row_with(&[(2, "\"a\nb\nc\"")]), row_with(&[(0, "x")])]),
        expect: rows(1, &[(5, "`ano`")]),
        check: Some(|rows| assert_eq!(rows[0].line, 2)),
    });
    cases
}

fn config() -> SourceConfig {
    SourceConfig {
        schema: Arc::new(Schema::banco_central()),
        encoding: None,
        delimiter: None,
    }
}

type Outcome = Result<(Vec<Row>, Vec<Reject>, reclamacoes::csv_source::FileStats), SourceError>;

fn read_bytes(bytes: &[u8]) -> Outcome {
    let (mut rows, mut rejects) = (Vec::new(), Vec::new());
    let stats = for_each_row_in_bytes(bytes, "case.csv", &config(), |r| {
        match r {
            Ok(row) => rows.push(row),
            Err(reject) => rejects.push(reject),
        }
        true
    })?;
    Ok((rows, rejects, stats))
}

fn check_outcome(name: &str, outcome: Outcome, expect: &Expect) -> Vec<Row> {
    match (outcome, expect) {
        (
            Ok((rows, rejects, stats)),
            Expect::Rows {
                rows: n,
                rejects: want,
            },
        ) => {
            assert!(!stats.empty, "{name}: not an empty file");
            assert_eq!(
                stats.rows, *n,
                "{name}: rows accepted; rejects: {rejects:?}"
            );
            assert_eq!(rows.len() as u64, *n, "{name}");
            assert_eq!(stats.rejected, want.len() as u64, "{name}: {rejects:?}");
            for (reject, (line, text)) in rejects.iter().zip(want.iter()) {
                assert_eq!(reject.line, *line, "{name}: reject line; {reject:?}");
                assert!(
                    reject.reason.contains(text),
                    "{name}: reason `{}` lacks `{text}`",
                    reject.reason
                );
                assert_eq!(reject.file, "case.csv", "{name}: the reject names the file");
                assert!(reject.raw.len() <= 4096 + 4, "{name}: raw is bounded");
            }
            for row in &rows {
                assert_eq!(row.values.len(), 14, "{name}");
                // What the producer sends, the consumer reads back unchanged.
                let schema = Schema::banco_central();
                let mut json = String::new();
                let source = Source {
                    file: "case.csv".into(),
                    line: row.line,
                };
                schema.write_json(&row.values, Some(&source), &mut json);
                let (back, _) = schema.decode_json(json.as_bytes()).unwrap();
                assert_eq!(back, row.values, "{name}: JSON round trip");
            }
            rows
        }
        (Ok((_, _, stats)), Expect::Empty) => {
            assert!(
                stats.empty && stats.rows == 0 && stats.rejected == 0,
                "{name}: {stats:?}"
            );
            Vec::new()
        }
        (Err(SourceError::Header(e)), Expect::Header(text)) => {
            let message = e.to_string();
            assert!(
                message.contains(text) && message.contains("case.csv"),
                "{name}: header error `{message}` lacks `{text}` or the file name"
            );
            Vec::new()
        }
        (other, expect) => panic!(
            "{name}: expected {expect:?}, got {:?}",
            other.map(|(rows, rejects, stats)| (rows.len(), rejects, stats))
        ),
    }
}

#[test]
fn malformed_csv_cases_are_rejected_with_location_or_accepted_as_documented() {
    let cases = csv_cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in &cases {
        let rows = check_outcome(case.name, read_bytes(&case.bytes), &case.expect);
        if let Some(check) = case.check {
            check(&rows);
        }
    }
    eprintln!("{} malformed CSV cases checked", cases.len());
}

#[test]
fn reading_from_a_file_and_from_memory_agree() {
    // The in-memory entry point (used by the fuzzer and the cases above) is the file reader.
    let dir = tempfile::tempdir().unwrap();
    for (i, case) in csv_cases().iter().enumerate() {
        if case.bytes.len() > 1 << 20 {
            continue;
        }
        let path = dir.path().join(format!("case{i}.csv"));
        std::fs::write(&path, &case.bytes).unwrap();
        let file = CsvFile::open(&path, &config()).unwrap();
        let mut from_file = Vec::new();
        let result = file.for_each_row(
            &config().schema,
            Arc::default(),
            &std::sync::atomic::AtomicBool::new(false),
            0,
            |r| {
                from_file.push(r.map_err(|e| (e.line, e.reason)));
                true
            },
        );
        let mut from_memory = Vec::new();
        let memory_result = for_each_row_in_bytes(&case.bytes, "x", &config(), |r| {
            from_memory.push(r.map_err(|e| (e.line, e.reason)));
            true
        });
        assert_eq!(result.is_ok(), memory_result.is_ok(), "{}", case.name);
        assert_eq!(from_file, from_memory, "{}", case.name);
    }
}

/// The hand-written files of `fixtures/bad` (see its README), read as `app produce` reads them.
#[test]
fn fixture_bad_files_match_their_readme() {
    let expected: &[(&str, Expect)] = &[
        (
            "wrong_column_count.csv",
            rows(2, &[(3, "expected 14 columns, found 5")]),
        ),
        (
            "too_many_columns.csv",
            rows(1, &[(3, "expected 14 columns, found 16")]),
        ),
        ("bad_int.csv", rows(1, &[(2, "`ano`")])),
        ("bad_trimestre.csv", rows(1, &[(2, "`trimestre`")])),
        ("missing_required.csv", rows(1, &[(2, "required")])),
        ("decimal_point.csv", rows(1, &[(2, "`indice`")])),
        (
            "thousands_separator.csv",
            rows(1, &[(3, "quantidade_total_de_clientes_ccs_e_scr")]),
        ),
        ("bad_cnpj.csv", rows(1, &[(2, "`cnpj_if`")])),
        ("bad_header.csv", Expect::Header("`Type`")),
        ("missing_column.csv", Expect::Header("missing")),
        ("header_only.csv", rows(0, &[])),
        ("utf8_bom_crlf.csv", rows(2, &[])),
        ("quoted_fields.csv", rows(2, &[])),
        ("binary_junk.csv", rows(2, &[(3, "columns")])),
        ("blank_lines.csv", rows(2, &[])),
    ];
    let dir = faultkit::repo_root().join("fixtures/bad");
    for (name, expect) in expected {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        check_outcome(name, read_bytes(&bytes), expect);
    }
}

// ---------------------------------------------------------------------------------------------
// Kafka messages through the real consumer
// ---------------------------------------------------------------------------------------------

enum MsgExpect {
    /// Written to a window, with its `instituicao_financeira` (first 40 chars).
    Row(&'static str),
    /// Written to `_dead_letter` with an error containing the text.
    Dead(&'static str),
}

struct MsgCase {
    name: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    expect: MsgExpect,
}

fn valid_json(name: &str) -> String {
    let schema = Schema::banco_central();
    let mut values = vec![Value::Null; schema.fields.len()];
    values[0] = Value::Int(2025);
    values[1] = Value::Int(1);
    values[2] = Value::Str("Mensagens".into());
    values[3] = Value::Str("Banco/financeira".into());
    values[4] = Value::Str("00360305".into());
    values[5] = Value::Str(name.into());
    let mut json = String::new();
    schema.write_json(
        &values,
        Some(&Source {
            file: "msg".into(),
            line: 1,
        }),
        &mut json,
    );
    json
}

fn msg(name: &'static str, value: Option<Vec<u8>>, expect: MsgExpect) -> MsgCase {
    MsgCase {
        name,
        key: Some(b"00360305".to_vec()),
        value,
        expect,
    }
}

fn msg_cases() -> Vec<MsgCase> {
    let v = |s: String| Some(s.into_bytes());
    let huge_name = format!("GRANDE {}", "G".repeat(10 << 20));
    vec![
        msg(
            "valid (baseline)",
            v(valid_json("VALIDA")),
            MsgExpect::Row("VALIDA"),
        ),
        msg(
            "not JSON",
            v("hello".into()),
            MsgExpect::Dead("is not valid JSON"),
        ),
        msg(
            "a JSON array",
            v("[1,2]".into()),
            MsgExpect::Dead("not an object (found an array)"),
        ),
        msg(
            "a JSON string",
            v("\"x\"".into()),
            MsgExpect::Dead("not an object (found a string)"),
        ),
        msg(
            "JSON null",
            v("null".into()),
            MsgExpect::Dead("not an object (found null)"),
        ),
        msg(
            "wrong type: ano as a string",
            v(valid_json("X").replace("\"ano\":2025", "\"ano\":\"2025\"")),
            MsgExpect::Dead("field `ano`: expected an integer"),
        ),
        msg(
            "float in an integer field",
            v(valid_json("X").replace("\"ano\":2025", "\"ano\":2025.5")),
            MsgExpect::Dead("field `ano`"),
        ),
        msg(
            "integer overflow",
            v(valid_json("X").replace("\"ano\":2025", "\"ano\":99999999999999999999")),
            MsgExpect::Dead("field `ano`"),
        ),
        msg(
            "missing required field",
            v(valid_json("X").replace("\"instituicao_financeira\":\"X\",", "")),
            MsgExpect::Dead("field `instituicao_financeira`: is required but missing or null"),
        ),
        msg(
            "required field null",
            v(valid_json("X").replace("\"tipo\":\"Banco/financeira\"", "\"tipo\":null")),
            MsgExpect::Dead("field `tipo`: is required"),
        ),
        msg(
            "CNPJ of the wrong width",
            v(valid_json("X").replace("\"00360305\"", "\"360305\"")),
            MsgExpect::Dead("field `cnpj_if`"),
        ),
        MsgCase {
            name: "null key (the key is not used by the consumer)",
            key: None,
            value: v(valid_json("SEM CHAVE")),
            expect: MsgExpect::Row("SEM CHAVE"),
        },
        msg(
            "empty value",
            Some(Vec::new()),
            MsgExpect::Dead("is not valid JSON"),
        ),
        msg(
            "null value (tombstone)",
            None,
            MsgExpect::Dead("the message has no value (null)"),
        ),
        msg(
            "10 MB value (topic max.message.bytes raised to 20 MiB)",
            v(valid_json(&huge_name)),
            MsgExpect::Row("GRANDE GGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGG"),
        ),
        msg(
            "invalid UTF-8 inside a string",
            Some(
                valid_json("INVALIDO")
                    .replace("INVALIDO", "INV\u{1}")
                    .into_bytes()
                    .into_iter()
                    .map(|b| if b == 1 { 0xFF } else { b })
                    .collect(),
            ),
            MsgExpect::Dead("is not valid JSON"),
        ),
        msg(
            "trailing garbage after the object",
            v(format!("{} x", valid_json("X"))),
            MsgExpect::Dead("trailing characters"),
        ),
        // Unknown fields are skipped without recursion (serde's IgnoredAny), so depth costs no
        // stack: the record is valid and kept. 200 levels in a known field is a type error.
        msg(
            "nested 200 deep in an unknown field (skipped, kept)",
            v(valid_json("X").replacen(
                '{',
                &format!("{{\"deep\":{}{},", "[".repeat(200), "]".repeat(200)),
                1,
            )),
            MsgExpect::Row("X"),
        ),
        msg(
            "nested 200 deep in a known field",
            v(valid_json("X").replace(
                "\"ano\":2025",
                &format!("\"ano\":{}{}", "[".repeat(200), "]".repeat(200)),
            )),
            MsgExpect::Dead("field `ano`: expected an integer, found an array"),
        ),
        msg(
            "UTF-8 BOM before the JSON",
            Some([&b"\xEF\xBB\xBF"[..], valid_json("X").as_bytes()].concat()),
            MsgExpect::Dead("is not valid JSON"),
        ),
        msg(
            "unknown extra fields (ignored)",
            v(valid_json("EXTRA").replacen('{', "{\"campo_novo\":[1,{\"a\":2}],", 1)),
            MsgExpect::Row("EXTRA"),
        ),
        msg(
            "duplicate key (the last one wins, as in serde_json)",
            v(
                valid_json("PRIMEIRO").replacen(
                    '{',
                    "{\"instituicao_financeira\":\"IGNORADO\",",
                    1,
                ),
            ),
            MsgExpect::Row("PRIMEIRO"),
        ),
        msg(
            "malformed _source (ignored)",
            v(valid_json("FONTE")
                .replace("\"_source\":{\"file\":\"msg\",\"line\":1}", "\"_source\":5")),
            MsgExpect::Row("FONTE"),
        ),
        msg(
            "escaped NUL and control characters in a string (kept)",
            v(valid_json("CTRL\u{0}\u{1f}")),
            MsgExpect::Row("CTRL\u{0}\u{1f}"),
        ),
    ]
}

fn create_topic_with_big_messages(brokers: &str, topic: &str) {
    let out = common::kafka_java(&common::kafka_libs())
        .arg("-Dlog4j2.level=warn")
        .args([
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            brokers,
            "--create",
            "--topic",
            topic,
            "--partitions",
            "1",
            "--replication-factor",
            "1",
            "--config",
            "max.message.bytes=20971520",
        ])
        .output()
        .expect("java is installed");
    assert!(
        out.status.success(),
        "creating {topic} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn malformed_kafka_messages_are_dead_lettered_or_accepted_as_documented() {
    let brokers = common::brokers();
    let mysql = common::mysql_url();
    let topic = common::random_topic("bad-messages");
    faultkit::connect(&brokers).await;
    create_topic_with_big_messages(&brokers, &topic);
    let cases = msg_cases();
    assert!(cases.len() >= 15);
    let kafka = faultkit::connect(&brokers).await;
    let h = faultkit::partition(&kafka, &topic, 0).await;
    let timestamp = Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap();
    // One produce call per message, so a rejected one could not take others with it.
    for (i, case) in cases.iter().enumerate() {
        let offsets = h
            .produce(
                vec![Record {
                    key: case.key.clone(),
                    value: case.value.clone(),
                    headers: Default::default(),
                    timestamp,
                }],
                Compression::None,
            )
            .await
            .unwrap_or_else(|e| panic!("{}: the broker refused it: {e}", case.name));
        assert_eq!(offsets, vec![i as i64]);
    }

    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("output");
    let done = faultkit::run_bounded(
        faultkit::app(&brokers, &mysql).args(common::consume_args(&topic, &out, &common::BOUNDED)),
        Duration::from_secs(300),
    );
    assert!(
        done.status.success(),
        "the consumer must not crash\n{}",
        done.both()
    );

    let rows: BTreeMap<i64, String> = faultkit::duckdb(
        &out,
        &format!(
            "SELECT kafka_offset, left(instituicao_financeira, 40) FROM {}",
            faultkit::output::TABLE
        ),
    )
    .into_iter()
    .map(|r| (r[0].as_i64().unwrap(), r[1].as_str().unwrap().to_string()))
    .collect();
    let dead: BTreeMap<i64, (String, Option<usize>)> = faultkit::duckdb(
        &out,
        &format!(
            "SELECT kafka_offset, error, octet_length(value) FROM {}",
            faultkit::output::DEAD
        ),
    )
    .into_iter()
    .map(|r| {
        (
            r[0].as_i64().unwrap(),
            (
                r[1].as_str().unwrap().to_string(),
                r[2].as_i64().map(|n| n as usize),
            ),
        )
    })
    .collect();
    assert_eq!(
        rows.len() + dead.len(),
        cases.len(),
        "every message is accounted for (rows {rows:?}, dead {dead:?})"
    );
    for (i, case) in cases.iter().enumerate() {
        let offset = i as i64;
        match &case.expect {
            MsgExpect::Row(name) => {
                let got = rows.get(&offset).unwrap_or_else(|| {
                    panic!("{}: expected a row, got {:?}", case.name, dead.get(&offset))
                });
                assert!(got.starts_with(name), "{}: {got:?}", case.name);
            }
            MsgExpect::Dead(text) => {
                let (error, len) = dead.get(&offset).unwrap_or_else(|| {
                    panic!(
                        "{}: expected a dead letter, got row {:?}",
                        case.name,
                        rows.get(&offset)
                    )
                });
                assert!(
                    error.contains(text),
                    "{}: error `{error}` lacks `{text}`",
                    case.name
                );
                assert_eq!(
                    *len,
                    case.value.as_ref().map(Vec::len),
                    "{}: the raw value is kept byte for byte",
                    case.name
                );
            }
        }
    }
    let big = faultkit::scalar(
        &out,
        &format!(
            "SELECT max(length(instituicao_financeira)) FROM {}",
            faultkit::output::TABLE
        ),
    );
    assert_eq!(
        big as usize,
        7 + (10 << 20),
        "the 10 MB value is written whole"
    );
    eprintln!(
        "{} malformed Kafka messages checked:\n{}",
        cases.len(),
        done.stdout
    );
    faultkit::delete_topic(&brokers, &topic).await;
}

//! `app produce` against the real broker: fixtures, the real Banco Central files, the malformed
//! corpus, partitioning compatible with the Java client, timeouts, strict mode and resume.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use common::{kcat_read_all, random_topic, run_app};
use serde_json::Value as Json;

fn produce(topic: &str, paths: &[&Path], extra: &[&str], cwd: &Path, ok: bool) -> String {
    let mut args: Vec<String> = vec!["produce".into(), "--topic".into(), topic.into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_app(&refs, cwd, ok);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number after `label` in the summary, e.g. `rows sent (acknowledged): 80`.
fn summary_number(summary: &str, label: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` in summary:\n{summary}"));
    line[line.find(':').unwrap() + 1..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn payloads(topic: &str) -> Vec<(common::KcatRecord, Json)> {
    kcat_read_all(topic)
        .into_iter()
        .map(|r| {
            let json = serde_json::from_str(r.payload.as_deref().expect("value")).unwrap();
            (r, json)
        })
        .collect()
}

#[tokio::test]
async fn fixtures_arrive_typed_and_in_utf8() {
    common::require_kafka().await;
    let topic = random_topic("fixtures");
    let work = tempfile::tempdir().unwrap();
    let summary = produce(&topic, &[&common::fixtures()], &[], work.path(), true);
    assert_eq!(summary_number(&summary, "rows sent"), 80, "{summary}");
    assert_eq!(summary_number(&summary, "rows rejected"), 0);
    assert!(summary.contains("(empty file)"), "{summary}");
    let records = payloads(&topic);
    assert_eq!(records.len(), 80);
    let mut with_cnpj = 0;
    let mut blank_indice = 0;
    for (r, v) in &records {
        assert!(v["ano"].is_i64() && v["trimestre"].is_i64(), "{v}");
        assert!(v["categoria"].is_string() && v["instituicao_financeira"].is_string());
        match &v["cnpj_if"] {
            Json::String(c) => {
                with_cnpj += 1;
                assert!(c.len() == 8 && c.bytes().all(|b| b.is_ascii_digit()), "{c}");
                assert_eq!(r.key.as_deref(), Some(c.as_str()), "key is the CNPJ");
            }
            Json::Null => assert_eq!(
                r.key.as_deref(),
                v["instituicao_financeira"].as_str(),
                "key falls back to the institution"
            ),
            other => panic!("cnpj_if {other}"),
        }
        match &v["indice"] {
            Json::Null => blank_indice += 1,
            n => assert!(n.is_f64(), "{n}"),
        }
        assert!(v["_source"]["file"].as_str().unwrap().ends_with(".csv"));
        assert!(v["_source"]["line"].as_u64().unwrap() >= 2);
        // Text arrives as UTF-8: no replacement characters, no cp1252 mojibake.
        let text = r.payload.as_deref().unwrap();
        assert!(!text.contains('\u{fffd}'), "{text}");
        for mojibake in ["Ã§", "Ã£", "Ã©", "Ã¡", "Âº"] {
            assert!(!text.contains(mojibake), "{text}");
        }
    }
    assert_eq!(with_cnpj, 49);
    assert_eq!(blank_indice, 26);
    assert!(records
        .iter()
        .any(|(_, v)| v["categoria"].as_str().unwrap().contains("Instituições")));
}

/// Java's `Utils.toPositive(Utils.murmur2(key)) % n` for each key, from the Kafka jars.
fn java_partitions(keys: &[String], partitions: usize) -> HashMap<String, i32> {
    let dir = tempfile::tempdir().unwrap();
    let keys_file = dir.path().join("keys.txt");
    std::fs::write(&keys_file, keys.join("\n")).unwrap();
    let source = r#"
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import org.apache.kafka.common.utils.Utils;
public class Partitions {
    public static void main(String[] args) throws Exception {
        int n = Integer.parseInt(args[1]);
        for (String key : Files.readAllLines(Paths.get(args[0]), StandardCharsets.UTF_8)) {
            int p = Utils.toPositive(Utils.murmur2(key.getBytes(StandardCharsets.UTF_8))) % n;
            System.out.println(p);
        }
    }
}"#;
    let out = common::run_java(
        source,
        "Partitions",
        &[keys_file.to_str().unwrap(), &partitions.to_string()],
    );
    keys.iter()
        .cloned()
        .zip(out.lines().map(|l| l.trim().parse::<i32>().unwrap()))
        .collect()
}

#[tokio::test]
async fn real_data_gives_918_records_partitioned_like_the_java_client() {
    common::require_kafka().await;
    let data = common::real_data_dir().join("bcb-ranking-reclamacoes");
    let topic = random_topic("real");
    let work = tempfile::tempdir().unwrap();
    let summary = produce(&topic, &[&data], &["--partitions", "3"], work.path(), true);
    assert_eq!(summary_number(&summary, "rows sent"), 918, "{summary}");
    assert_eq!(summary_number(&summary, "rows rejected"), 0, "{summary}");

    let records = payloads(&topic);
    assert_eq!(records.len(), 918);
    let partitions_used: std::collections::BTreeSet<i32> =
        records.iter().map(|(r, _)| r.partition).collect();
    assert_eq!(
        partitions_used.len(),
        3,
        "rows spread over the 3 partitions"
    );

    let keys: Vec<String> = {
        let mut k: Vec<String> = records.iter().filter_map(|(r, _)| r.key.clone()).collect();
        k.sort();
        k.dedup();
        k
    };
    let java = java_partitions(&keys, 3);
    for (r, _) in &records {
        let key = r.key.as_ref().expect("every real row has a key");
        assert_eq!(java[key], r.partition, "key {key}");
        assert_eq!(
            reclamacoes::kafka::partition_for_key(key.as_bytes(), 3),
            r.partition
        );
    }

    // Types and text, checked on rows of the real files.
    let with_cnpj = records
        .iter()
        .filter(|(_, v)| v["cnpj_if"].is_string())
        .count();
    assert_eq!(with_cnpj, 437);
    let non_ascii = records
        .iter()
        .filter(|(r, _)| !r.payload.as_deref().unwrap().is_ascii())
        .count();
    assert!(non_ascii > 0, "accented text (Secundário, ...) arrives");
    assert!(records
        .iter()
        .all(|(r, _)| !r.payload.as_deref().unwrap().contains('\u{fffd}')));
    let comma = records
        .iter()
        .filter(|(_, v)| v["categoria"].as_str().unwrap().contains(','))
        .count();
    assert!(comma > 0, "the Categoria with a comma survives");
    for (_, v) in &records {
        assert!((1..=4).contains(&v["trimestre"].as_i64().unwrap()));
        assert!(v["indice"].is_null() || v["indice"].is_f64());
    }

    // Read back with rskafka too: same count per partition as kcat saw.
    let kafka = common::require_kafka().await;
    let mut per_partition: BTreeMap<i32, usize> = BTreeMap::new();
    for p in 0..3 {
        let handle = common::partition(&kafka, &topic, p).await;
        let (_, high) = handle.offsets().await.unwrap();
        let mut offset = 0;
        let mut n = 0;
        while offset < high {
            let (batch, _) = handle.fetch(offset, 1 << 20, 200).await.unwrap();
            for r in &batch {
                let v: Json = serde_json::from_slice(r.record.value.as_ref().unwrap()).unwrap();
                assert!(v["ano"].is_i64());
            }
            n += batch.len();
            offset = batch.last().map_or(high, |r| r.offset + 1);
        }
        per_partition.insert(p, n);
    }
    let mut kcat_counts: BTreeMap<i32, usize> = BTreeMap::new();
    for (r, _) in &records {
        *kcat_counts.entry(r.partition).or_default() += 1;
    }
    assert_eq!(per_partition, kcat_counts);
}

/// One malformed file and what must happen to it.
struct BadCase {
    file: &'static str,
    /// `None` when the header is wrong and nothing may be sent.
    sent: Option<u64>,
    /// (line, text the reason must contain)
    rejects: &'static [(u64, &'static str)],
}

const BAD_CASES: &[BadCase] = &[
    BadCase {
        file: "wrong_column_count.csv",
        sent: Some(2),
        rejects: &[(3, "expected 14 columns, found 5")],
    },
    BadCase {
        file: "too_many_columns.csv",
        sent: Some(1),
        rejects: &[(3, "expected 14 columns, found 16")],
    },
    BadCase {
        file: "bad_int.csv",
        sent: Some(1),
        rejects: &[(2, "`ano`")],
    },
    BadCase {
        file: "bad_trimestre.csv",
        sent: Some(1),
        rejects: &[(2, "`trimestre`")],
    },
    BadCase {
        file: "missing_required.csv",
        sent: Some(1),
        rejects: &[(2, "required")],
    },
    BadCase {
        file: "decimal_point.csv",
        sent: Some(1),
        rejects: &[(2, "`indice`")],
    },
    BadCase {
        file: "thousands_separator.csv",
        sent: Some(1),
        rejects: &[(3, "quantidade_total_de_clientes_ccs_e_scr")],
    },
    BadCase {
        file: "bad_cnpj.csv",
        sent: Some(1),
        rejects: &[(2, "`cnpj_if`")],
    },
    BadCase {
        file: "bad_header.csv",
        sent: None,
        rejects: &[],
    },
    BadCase {
        file: "missing_column.csv",
        sent: None,
        rejects: &[],
    },
    BadCase {
        file: "header_only.csv",
        sent: Some(0),
        rejects: &[],
    },
    BadCase {
        file: "utf8_bom_crlf.csv",
        sent: Some(2),
        rejects: &[],
    },
    BadCase {
        file: "quoted_fields.csv",
        sent: Some(2),
        rejects: &[],
    },
    BadCase {
        file: "binary_junk.csv",
        sent: Some(2),
        rejects: &[(3, "columns")],
    },
    BadCase {
        file: "blank_lines.csv",
        sent: Some(2),
        rejects: &[],
    },
];

#[tokio::test]
async fn malformed_corpus_gives_the_expected_rejects() {
    common::require_kafka().await;
    let bad_dir = common::fixtures().join("bad");
    for case in BAD_CASES {
        let topic = random_topic("bad");
        let work = tempfile::tempdir().unwrap();
        let path = bad_dir.join(case.file);
        match case.sent {
            None => {
                let out = produce(&topic, &[&path], &[], work.path(), false);
                assert!(
                    out.contains(case.file) && out.contains("header"),
                    "{}: {out}",
                    case.file
                );
                let kafka = common::require_kafka().await;
                assert_eq!(
                    kafka.partition_count(&topic).await.unwrap(),
                    None,
                    "{}: nothing may be sent, not even the topic created",
                    case.file
                );
            }
            Some(sent) => {
                let out = produce(&topic, &[&path], &[], work.path(), true);
                assert_eq!(
                    summary_number(&out, "rows sent"),
                    sent,
                    "{}: {out}",
                    case.file
                );
                assert_eq!(
                    summary_number(&out, "rows rejected"),
                    case.rejects.len() as u64,
                    "{}: {out}",
                    case.file
                );
                let rejects = read_rejects(&work.path().join("rejects"));
                assert_eq!(
                    rejects.len(),
                    case.rejects.len(),
                    "{}: {rejects:?}",
                    case.file
                );
                for ((line, reason), got) in case.rejects.iter().zip(&rejects) {
                    assert_eq!(got["line"].as_u64(), Some(*line), "{}: {got}", case.file);
                    assert!(
                        got["reason"].as_str().unwrap().contains(reason),
                        "{}: reason {got} should contain {reason}",
                        case.file
                    );
                    assert!(got["file"].as_str().unwrap().ends_with(case.file));
                    assert!(got.get("raw").is_some());
                }
                if sent > 0 {
                    assert_eq!(kcat_read_all(&topic).len() as u64, sent, "{}", case.file);
                }
            }
        }
    }
}

fn read_rejects(dir: &Path) -> Vec<Json> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Json>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn strict_mode_fails_on_the_first_reject() {
    common::require_kafka().await;
    let topic = random_topic("strict");
    let work = tempfile::tempdir().unwrap();
    let path = common::fixtures().join("bad/bad_int.csv");
    let out = produce(&topic, &[&path], &["--strict"], work.path(), false);
    assert!(
        out.contains("--strict") && out.contains("bad_int.csv:2"),
        "{out}"
    );
}

#[tokio::test]
async fn unreachable_broker_is_a_clear_error_not_a_hang() {
    let work = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = produce(
        "t",
        &[&common::fixtures()],
        &["--brokers", "127.0.0.1:1", "--timeout", "2s"],
        work.path(),
        false,
    );
    assert!(
        out.contains("127.0.0.1:1") && out.contains("make up"),
        "{out}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[tokio::test]
async fn resume_from_skips_what_was_acknowledged() {
    common::require_kafka().await;
    let topic = random_topic("resume");
    let work = tempfile::tempdir().unwrap();
    let fixtures = common::fixtures();
    let second = fixtures.join("reclamacoes_2025_tri_02.csv");
    let resume = format!("{}:12", second.display());
    let out = produce(
        &topic,
        &[&fixtures],
        &["--resume-from", &resume],
        work.path(),
        true,
    );
    // File 1 skipped entirely; in file 2 lines 2..=11 (10 rows) skipped: 40 - 10 = 30 sent.
    assert_eq!(summary_number(&out, "rows sent"), 30, "{out}");
    let records = payloads(&topic);
    assert!(records.iter().all(|(_, v)| {
        v["_source"]["file"]
            .as_str()
            .unwrap()
            .ends_with("tri_02.csv")
            && v["_source"]["line"].as_u64().unwrap() >= 12
    }));
}

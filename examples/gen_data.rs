//! Benchmark data generator: writes N made-up complaint rows in the exact format of the Banco
//! Central "Ranking de reclamações" files, deterministically from a seed.
//!
//! ```text
//! cargo run --release --example gen_data -- --rows 1000000 --out .local/bench-data/n1000000
//!     [--seed 42] [--rows-per-file 500000]
//! ```
//!
//! Format (as `fixtures/README.md` and `shared/data/README.md` describe it): Windows-1252, `;`
//! separated, every line (header too) ends with `;`, LF line ends, no quotes, the identical
//! 14-column header, decimal comma in `Índice` (blank when the client total is under 100,000),
//! a blank is a single space, `Trimestre` is `1º`..`4º`, `Conglomerado` rows have a blank
//! `CNPJ IF`, `Banco/financeira` rows an 8-digit CNPJ drawn from `sql/seed.sql` (about 5% from
//! a few CNPJs that are not in the seed, so enrichment misses happen too). One file per
//! (year, quarter), `reclamacoes_bench_NNNN.csv`, at most `--rows-per-file` rows each. The same
//! arguments always write the same bytes (own SplitMix64 generator, no dependency on `rand`'s
//! stream stability). Used by `scripts/bench.sh`; see BENCHMARKS.md.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const HEADER: &str = "Ano;Trimestre;Categoria;Tipo;CNPJ IF;Instituição financeira;Índice;\
Quantidade de reclamações reguladas procedentes;Quantidade de reclamações reguladas - outras;\
Quantidade de reclamações não reguladas;Quantidade total de reclamações;\
Quantidade total de clientes – CCS e SCR;Quantidade de clientes – CCS;\
Quantidade de clientes – SCR;";

/// The institutions of `sql/seed.sql` (CNPJ, name).
const SEED_BANKS: &[(&str, &str)] = &[
    ("00000000", "BANCO AURORA S.A."),
    ("00360305", "CAIXA ECONÔMICA FICTÍCIA"),
    ("00012345", "COOPERATIVA DE CRÉDITO VALE DO IPÊ"),
    ("00098765", "BANCO JACARANDÁ DE INVESTIMENTO S.A."),
    (
        "01020304",
        "SOCIEDADE DE CRÉDITO AO MICROEMPREENDEDOR JOÃO-DE-BARRO LTDA.",
    ),
    ("04040404", "BANCO PITANGA S.A."),
    ("07070707", "BANCO DO SERTÃO IMAGINÁRIO S.A."),
    (
        "09090909",
        "FINANCEIRA CORAÇÃO DE MARIA S.A. – CRÉDITO, FINANCIAMENTO E INVESTIMENTO",
    ),
    ("11111111", "BANCO CARAMBOLA S.A."),
    ("12345678", "BANCO ARAÇÁ MÚLTIPLO S.A."),
    (
        "13131313",
        "PAGAMENTOS TUCANO INSTITUIÇÃO DE PAGAMENTO S.A.",
    ),
    (
        "17171717",
        "COOPERATIVA DE ECONOMIA E CRÉDITO MÚTUO DOS SERVIDORES DE ITAPOÃ",
    ),
    ("20202020", "BANCO SABIÁ S.A."),
    ("21212121", "CRÉDITO CAJUÍNA S.A."),
    ("23232323", "BANCO MARACUJÁ S.A."),
    ("25252525", "COOPERATIVA DE CRÉDITO SERTÃO VERDE"),
    ("27272727", "BANCO GUARANÁ DIGITAL S.A."),
    ("30303030", "BANCO D'ÁGUA DOCE S.A."),
    ("31313131", "BANCO IPIRANGA FICTÍCIO S.A."),
    ("33333333", "BANCO ESTRELA DO SUL S.A."),
    ("35353535", "FINANCEIRA BEM-TE-VI S.A."),
    ("40404040", "BANCO AÇAÍ S.A."),
    ("42424242", "BANCO CAMBUCÁ DE CÂMBIO S.A."),
    ("45454545", "COOPERATIVA DE CRÉDITO DO PLANALTO CENTRAL"),
    ("50505050", "BANCO PAINEIRA S.A."),
    ("55555555", "BANCO TAMARINDO MÚLTIPLO S.A."),
    ("60606060", "BANCO JEQUITIBÁ S.A."),
    (
        "65656565",
        "PAGUE-FÁCIL ARAUCÁRIA INSTITUIÇÃO DE PAGAMENTO S.A.",
    ),
    ("70707070", "BANCO URUCUM S.A."),
    ("90909090", "BANCO MANDACARU S.A."),
];

/// Banks that are not in the seed (enrichment misses).
const MISS_BANKS: &[(&str, &str)] = &[
    ("99000001", "BANCO FANTASMA DO NORTE S.A."),
    ("00999999", "FINANCEIRA SEM CADASTRO LTDA."),
    ("99000002", "BANCO INEXISTENTE DO VALE S.A."),
];

const CONGLOMERADOS: &[&str] = &[
    "ARAUCÁRIA (conglomerado)",
    "CAJUÍNA (conglomerado)",
    "CAMBUCÁ (conglomerado)",
    "JATOBÁ (conglomerado)",
    "IPÊ-AMARELO (conglomerado)",
    "SERTÃO – CRÉDITO (conglomerado)",
    "AÇAÍ (conglomerado)",
    "MANDACARU (conglomerado)",
    "PEQUI (conglomerado)",
    "BURITI (conglomerado)",
    "GUARIROBA (conglomerado)",
    "CUPUAÇU (conglomerado)",
];

const CATEGORIAS: &[&str] = &[
    "Top 10 - Bancos e Financeiras",
    "Demais Bancos, Financeiras e Instituições de Pagamento",
    "Grupo Principal",
    "Grupo Secundário",
];

/// SplitMix64: tiny, fast, and its stream is fixed forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    /// True with probability `pct`/100.
    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
    /// Roughly log-uniform in `lo..hi` (lo >= 1).
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (a + (b - a) * u).exp() as u64
    }
}

fn cp1252(s: &str) -> Vec<u8> {
    let (bytes, _, unmappable) = encoding_rs::WINDOWS_1252.encode(s);
    assert!(
        !unmappable,
        "`{s}` has a character Windows-1252 cannot hold"
    );
    bytes.into_owned()
}

struct Args {
    rows: u64,
    out: PathBuf,
    seed: u64,
    rows_per_file: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut rows = None;
    let mut out = None;
    let mut seed = 42u64;
    let mut rows_per_file = 500_000u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next().ok_or_else(|| {
                format!("{flag} needs a value; see the usage in examples/gen_data.rs")
            })
        };
        let number = |v: String, what: &str| {
            v.replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{what} `{v}` is not a whole number"))
        };
        match flag.as_str() {
            "--rows" => rows = Some(number(value()?, "--rows")?),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--seed" => seed = number(value()?, "--seed")?,
            "--rows-per-file" => rows_per_file = number(value()?, "--rows-per-file")?.max(1),
            "-h" | "--help" => {
                return Err("usage: gen_data --rows N --out DIR [--seed 42] [--rows-per-file 500000]".into())
            }
            other => return Err(format!("unknown argument `{other}`; usage: gen_data --rows N --out DIR [--seed S] [--rows-per-file M]")),
        }
    }
    Ok(Args {
        rows: rows.ok_or("--rows N is required")?,
        out: out.ok_or("--out DIR is required")?,
        seed,
        rows_per_file,
    })
}

fn write_row(out: &mut Vec<u8>, rng: &mut Rng, tables: &Tables, ano: u32, tri: u32) {
    let categoria = &tables.categorias[rng.below(tables.categorias.len() as u64) as usize];
    let conglomerado = rng.chance(50);
    let (tipo, cnpj, nome): (&[u8], &[u8], &[u8]) = if conglomerado {
        let n = &tables.conglomerados[rng.below(tables.conglomerados.len() as u64) as usize];
        (b"Conglomerado", b" ", n)
    } else if rng.chance(5) {
        let (c, n) = &tables.misses[rng.below(tables.misses.len() as u64) as usize];
        (b"Banco/financeira", c, n)
    } else {
        let (c, n) = &tables.seed[rng.below(tables.seed.len() as u64) as usize];
        (b"Banco/financeira", c, n)
    };
    let clientes_total = rng.log_uniform(1_000, 90_000_000);
    let ccs = clientes_total - rng.below(clientes_total / 5 + 1);
    let scr = rng.below(clientes_total + 1);
    let procedentes = rng.log_uniform(1, (clientes_total / 2_000).max(2)) - 1;
    let outras = rng.below(procedentes * 2 + 10);
    let nao_reguladas = rng.below(procedentes + 10);
    let total = procedentes + outras + nao_reguladas;

    let _ = write!(out, "{ano};{tri}");
    out.push(0xBA); // º
    out.push(b';');
    out.extend_from_slice(categoria);
    out.push(b';');
    out.extend_from_slice(tipo);
    out.push(b';');
    out.extend_from_slice(cnpj);
    out.push(b';');
    out.extend_from_slice(nome);
    out.push(b';');
    if clientes_total < 100_000 {
        out.push(b' ');
    } else {
        // procedentes × 1,000,000 / total clients, 2 decimals, decimal comma.
        let hundredths = (procedentes as u128 * 100_000_000 + clientes_total as u128 / 2)
            / clientes_total as u128;
        let _ = write!(out, "{},{:02}", hundredths / 100, hundredths % 100);
    }
    let _ = write!(
        out,
        ";{procedentes};{outras};{nao_reguladas};{total};{clientes_total};"
    );
    // About 10% of the rows have a blank CCS or SCR count.
    match rng.below(20) {
        0 => {
            let _ = write!(out, " ;{scr};");
        }
        1 => {
            let _ = write!(out, "{ccs}; ;");
        }
        _ => {
            let _ = write!(out, "{ccs};{scr};");
        }
    }
    out.push(b'\n');
}

struct Tables {
    categorias: Vec<Vec<u8>>,
    conglomerados: Vec<Vec<u8>>,
    seed: Vec<(Vec<u8>, Vec<u8>)>,
    misses: Vec<(Vec<u8>, Vec<u8>)>,
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gen_data: {e}");
            return ExitCode::from(2);
        }
    };
    let pair = |(c, n): &(&str, &str)| (cp1252(c), cp1252(n));
    let tables = Tables {
        categorias: CATEGORIAS.iter().map(|s| cp1252(s)).collect(),
        conglomerados: CONGLOMERADOS.iter().map(|s| cp1252(s)).collect(),
        seed: SEED_BANKS.iter().map(pair).collect(),
        misses: MISS_BANKS.iter().map(pair).collect(),
    };
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!(
            "gen_data: cannot create {}: {e}; check the path and permissions",
            args.out.display()
        );
        return ExitCode::FAILURE;
    }
    let header = cp1252(HEADER);
    let mut rng = Rng(args.seed);
    let mut written = 0u64;
    let mut file_no = 0u32;
    let mut line = Vec::with_capacity(512);
    while written < args.rows || file_no == 0 {
        file_no += 1;
        // 2021 Q1, 2021 Q2, ... one (year, quarter) per file.
        let ano = 2021 + (file_no - 1) / 4;
        let tri = (file_no - 1) % 4 + 1;
        let path = args.out.join(format!("reclamacoes_bench_{file_no:04}.csv"));
        let result = (|| -> std::io::Result<()> {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&path)?);
            w.write_all(&header)?;
            w.write_all(b"\n")?;
            let n = args.rows_per_file.min(args.rows - written);
            for _ in 0..n {
                line.clear();
                write_row(&mut line, &mut rng, &tables, ano, tri);
                w.write_all(&line)?;
            }
            written += n;
            w.flush()
        })();
        if let Err(e) = result {
            eprintln!(
                "gen_data: cannot write {}: {e}; check free disk space and permissions",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    println!(
        "gen_data: {written} rows in {file_no} file(s) under {} (seed {})",
        args.out.display(),
        args.seed
    );
    ExitCode::SUCCESS
}

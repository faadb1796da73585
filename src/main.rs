//! The `app` binary: everything lives in the library; see `reclamacoes::cli`.

fn main() -> std::process::ExitCode {
    reclamacoes::cli::main()
}

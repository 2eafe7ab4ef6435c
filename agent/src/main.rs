//! `ms2m-agent` command line. Each subcommand lives in `cmd/<name>.rs` with its clap
//! `Args` and an async `run`.

fn main() -> anyhow::Result<()> {
    Ok(())
}

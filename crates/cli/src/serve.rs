//! `serve`: the production server, configured by the [`Settings`] over the TOML file named by
//! `--config`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use cortex_realtime::{Server, shutdown_signal};

use crate::logging::LogFormat;
use crate::settings::{self, Settings};

/// Every setting also reads from `CORTEX_<FLAG>` and from the TOML file given by `--config`
/// (keys are the flag names in snake case). Precedence: flag, environment, file, default.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML config file.
    #[arg(long, env = "CORTEX_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

/// The log format asked for, and the rest of the settings, layered (flag, environment, file):
/// logging starts before the server is built, so that its start is logged as asked.
pub fn layered(args: ServeArgs) -> Result<(LogFormat, ServeArgs)> {
    let settings = args.settings.over_file(args.config.as_deref())?;
    let format = settings.log_format();
    Ok((
        format,
        ServeArgs {
            config: None,
            settings,
        },
    ))
}

/// Serves with `args` as [`layered`] made them.
pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let config = args.settings.into_config()?;
    settings::check(&config)?;
    let server = Server::bind(config).await?;
    let signal = shutdown_signal();
    println!("listening on {}", server.local_addr());
    if let Some(admin) = server.admin_addr() {
        println!("admin listening on {admin}");
    }
    tracing::info!(addr = %server.local_addr(), "serving");
    server.run(signal).await?;
    tracing::info!("drained; bye");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod reference {
    //! The configuration reference of docs/operations.md: generated from the settings table
    //! ([`Settings::reference`]) and checked here to be the one in the file, with every flag of
    //! `serve --help` in it. `UPDATE_DOCS=1 cargo test -p cortex-realtime-cli --bin
    //! cortex-realtime reference` writes it.

    use clap::CommandFactory;

    use super::*;
    use crate::layers::Row;

    const START: &str = "<!-- config-reference:start -->";
    const END: &str = "<!-- config-reference:end -->";

    fn operations_md() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md")
    }

    /// The table: one row per setting, `--config` first.
    fn table() -> String {
        let config = Row {
            flag: "--config".into(),
            env: "CORTEX_CONFIG".into(),
            key: String::new(),
            kind: "file path".into(),
            default: None,
            help: "TOML file of settings, keys as in this table (flag and environment win over it)"
                .into(),
        };
        let cell = |s: &str| s.replace('|', "\\|");
        let mut out = String::from(
            "| Flag | Environment | Config key | Value | Default | Meaning |\n\
             | --- | --- | --- | --- | --- | --- |\n",
        );
        for row in std::iter::once(config).chain(Settings::reference()) {
            let key = if row.key.is_empty() {
                "-".to_owned()
            } else {
                format!("`{}`", row.key)
            };
            let default = row
                .default
                .map_or("-".to_owned(), |d| format!("`{}`", cell(&d)));
            out.push_str(&format!(
                "| `{}` | `{}` | {key} | {} | {default} | {} |\n",
                row.flag,
                row.env,
                cell(&row.kind),
                cell(&row.help),
            ));
        }
        out
    }

    #[test]
    fn the_reference_in_docs_operations_md_is_the_one_generated_from_the_settings() {
        let path = operations_md();
        let doc = std::fs::read_to_string(&path).expect("docs/operations.md");
        let (Some(start), Some(end)) = (doc.find(START), doc.find(END)) else {
            panic!("docs/operations.md has no {START} ... {END} section");
        };
        let current = &doc[start + START.len()..end];
        let generated = format!("\n{}", table());
        if current != generated {
            if std::env::var_os("UPDATE_DOCS").is_some() {
                let updated = format!("{}{START}{generated}{}", &doc[..start], &doc[end..]);
                std::fs::write(&path, updated).unwrap();
                return;
            }
            panic!(
                "docs/operations.md's configuration reference is not the generated one; write it \
                 with `UPDATE_DOCS=1 cargo test -p cortex-realtime-cli --bin cortex-realtime \
                 reference`. Generated:\n{generated}"
            );
        }
    }

    #[test]
    fn every_flag_of_serve_help_is_in_the_reference_with_its_variable() {
        let table = table();
        let mut cli = crate::Cli::command();
        cli.build();
        let serve = cli.find_subcommand("serve").expect("serve");
        let mut n = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) || arg.is_hide_set() {
                continue;
            }
            let env = arg.get_env().expect("every flag of serve has a variable");
            let line = format!("| `--{long}` | `{}` |", env.to_string_lossy());
            assert!(table.contains(&line), "{line} is not in the reference");
            n += 1;
        }
        assert_eq!(n, table.lines().count() - 2, "one row per flag");
    }
}

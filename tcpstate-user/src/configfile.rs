//! `tcpstate run --config FILE`: options from a TOML file, by their long names or their aliases
//! (node_exporter's `web.listen-address`, `log.level`...). Precedence is
//! flags, then TCPSTATE_* environment variables, then the file, then defaults: the file's values
//! are appended to the command line only for options that are still at their defaults, and clap
//! then validates them like any flag (so a bad value names its option).

use std::{ffi::OsString, path::Path};

use clap::{parser::ValueSource, CommandFactory};

use crate::cli::{Cli, Command};

/// The command line, completed with the config file's values when `run --config` names one.
pub fn complete_args(argv: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Ok(cli) = Cli::try_parse_from_args(&argv) else {
        return Ok(argv);
    }; // clap reports it
    let Command::Run(run) = &cli.command else {
        return Ok(argv);
    };
    let Some(path) = run.config.clone() else {
        return Ok(argv);
    };
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(|e| e.to_string())?;
    let run_matches = matches
        .subcommand_matches("run")
        .expect("run subcommand parsed above");
    let top = Cli::command();
    let run_cmd = top
        .find_subcommand("run")
        .expect("run subcommand exists")
        .clone();
    let table = read(&path)?;
    let mut out = argv;
    for (key, value) in table {
        // `run`'s own options, then the global ones (`log`, `log.format`).
        let named = |a: &&clap::Arg| {
            a.get_long() == Some(key.as_str())
                || a.get_all_aliases()
                    .is_some_and(|all| all.contains(&key.as_str()))
        };
        let Some(arg) = run_cmd.get_arguments().find(named).or_else(|| {
            top.get_arguments()
                .filter(|a| a.is_global_set())
                .find(named)
        }) else {
            return Err(format!(
                "unknown option {key:?} in {}: use the long names of `tcpstate run --help`",
                path.display()
            ));
        };
        if key == "config" {
            return Err(format!(
                "{}: a config file cannot name another (config = ...)",
                path.display()
            ));
        }
        // Set on the command line or in the environment: those win over the file.
        let source = run_matches.value_source(arg.get_id().as_str());
        if matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or(key.as_str()));
        match value {
            toml::Value::Boolean(true) => out.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for item in items {
                    out.push(format!("{flag}={}", scalar(&key, &item, &path)?).into());
                }
            }
            other => out.push(format!("{flag}={}", scalar(&key, &other, &path)?).into()),
        }
    }
    Ok(out)
}

fn scalar(key: &str, v: &toml::Value, path: &Path) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        _ => Err(format!(
            "option {key:?} in {} must be a string, number or list of them",
            path.display()
        )),
    }
}

fn read(path: &Path) -> Result<toml::Table, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    text.parse::<toml::Table>().map_err(|e| {
        format!(
            "config file {} is not valid TOML: {}",
            path.display(),
            e.message()
        )
    })
}

impl Cli {
    fn try_parse_from_args(argv: &[OsString]) -> Result<Cli, clap::Error> {
        <Cli as clap::Parser>::try_parse_from(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completed(name: &str, body: &str, flags: &[&str]) -> Vec<String> {
        let path = std::env::temp_dir().join(format!(
            "tcpstate-configfile-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, body).unwrap();
        let mut argv: Vec<OsString> = ["tcpstate", "run", "--config"]
            .iter()
            .map(OsString::from)
            .collect();
        argv.push(path.clone().into());
        argv.extend(flags.iter().map(OsString::from));
        let out = complete_args(argv);
        let _ = std::fs::remove_file(&path);
        out.unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    /// node_exporter's spellings name the same options in the file as on the command line.
    #[test]
    fn keys_may_be_the_flags_aliases_and_global_options() {
        let args = completed(
            "aliases",
            concat!(
                "\"web.listen-address\" = \"127.0.0.1:9100\"\n",
                "\"web.telemetry-path\" = \"/m\"\n",
                "\"log.level\" = \"debug\"\n",
                "\"log.format\" = \"json\"\n",
                "time-wait = \"30s\"\n",
            ),
            &[],
        );
        for want in [
            "--listen=127.0.0.1:9100",
            "--web.telemetry-path=/m",
            "--log=debug",
            "--log.format=json",
            "--time-wait=30s",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
        }
        // The long names still work, and a flag still wins over the file.
        let args = completed(
            "long",
            "listen = \":9100\"\n",
            &["--web.listen-address", ":9200"],
        );
        assert!(!args.iter().any(|a| a.contains("9100")), "{args:?}");
        let args = completed("global", "\"log.level\" = \"debug\"\n", &["--log", "warn"]);
        assert!(!args.iter().any(|a| a.contains("debug")), "{args:?}");
    }
}

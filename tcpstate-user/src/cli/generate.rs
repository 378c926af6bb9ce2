//! `tcpstate generate man | completions SHELL` (hidden from --help): the man page and the shell
//! completions `cargo xtask dist` puts in the .deb, generated from the clap definitions so that
//! they say what --help says.

use std::{io::Write, path::PathBuf};

use clap::{Args, CommandFactory, Subcommand};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(subcommand)]
    pub what: Generated,
}

#[derive(Debug, Subcommand)]
pub enum Generated {
    /// tcpstate(1) and a page per subcommand (tcpstate-run(1), ...), in roff, into a directory.
    Man { dir: PathBuf },
    /// The completion script of a shell (bash, zsh, fish, elvish, powershell), on stdout.
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
}

pub fn run(args: &GenerateArgs) -> std::io::Result<()> {
    match &args.what {
        Generated::Man { dir } => clap_mangen::generate_to(visible(), dir),
        Generated::Completions { shell } => {
            completions(*shell, &mut std::io::stdout());
            Ok(())
        }
    }
}

/// The completion script of `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut visible(), "tcpstate", out);
}

/// The command line without its hidden subcommands: clap_complete would offer them otherwise
/// (clap_mangen leaves them out itself), and clap cannot remove a subcommand from a command.
fn visible() -> clap::Command {
    let cli = Cli::command();
    let mut out = clap::Command::new("tcpstate")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = cli.get_about() {
        out = out.about(about.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_but_generate_has_a_man_page() {
        let dir = std::env::temp_dir().join(format!("tcpstate-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        clap_mangen::generate_to(visible(), &dir).unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        pages.sort();
        let top = std::fs::read_to_string(dir.join("tcpstate.1")).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "run",
            "flows",
            "leaks",
            "cleanup",
            "describe-metrics",
            "replay",
        ] {
            assert!(
                pages.contains(&format!("tcpstate-{sub}.1")),
                "no page for {sub}: {pages:?}"
            );
            // roff escapes every hyphen.
            let named = format!("tcpstate-{sub}(1)").replace('-', "\\-");
            assert!(top.contains(&named), "{top}");
        }
        assert!(top.contains(".TH tcpstate 1"), "{top}");
        assert!(!pages.iter().any(|p| p.contains("generate")), "{pages:?}");
        assert!(!top.contains("generate"), "{top}");
    }

    #[test]
    fn completions_know_the_subcommands_and_flags_but_not_generate() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let script = String::from_utf8(out).unwrap();
            // Long options without their dashes: fish writes `-l listen`.
            for word in [
                "describe-metrics",
                "listen",
                "containers",
                "close-wait-leak-after",
            ] {
                assert!(script.contains(word), "{shell}: no {word}");
            }
            assert!(
                !script.contains("generate"),
                "{shell}: offers the hidden subcommand"
            );
        }
    }
}

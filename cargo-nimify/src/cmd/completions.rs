//! `cargo nimify completions SHELL`: a completion script for `cargo nimify ...` on stdout.
//!
//! Shells complete `cargo` itself, so each script adds `nimify` to that rather than replacing it:
//!
//! - zsh: the function `_cargo-nimify`, which cargo's own zsh completion calls for `cargo nimify`
//!   (save it as `_cargo-nimify` in a directory on `$fpath`);
//! - fish: `complete -c cargo` lines for the `nimify` subcommand, added to fish's cargo ones;
//! - bash: a handler for `cargo` that completes `cargo nimify ...` and hands every other `cargo`
//!   command to the handler that was there before it (rustup's), so source it after that one;
//! - elvish and powershell: the `cargo nimify` tree as clap writes it for `cargo`.

use std::io::Write as _;

use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use crate::CliError;

/// `completions` arguments.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Prints the script.
pub fn run(args: &CompletionsArgs) -> Result<(), CliError> {
    std::io::stdout()
        .write_all(script(args.shell)?.as_bytes())
        .map_err(|e| CliError::msg(format!("cannot write the completion script to stdout: {e}")))
}

/// The script for `shell`.
pub fn script(shell: Shell) -> Result<String, CliError> {
    Ok(match shell {
        Shell::Zsh => {
            // The root is `nimify` itself, named as the function cargo's completion looks for;
            // cargo hands it the words from `nimify` on.
            let Some(nimify) = crate::Cargo::command().find_subcommand("nimify").cloned() else {
                return Err(CliError::msg("no `nimify` subcommand to complete"));
            };
            generate(shell, nimify.name("cargo-nimify"), "cargo-nimify")
        }
        Shell::Bash => {
            let own = generate(shell, crate::Cargo::command(), "cargo");
            // clap names the function `_cargo` and registers it for `cargo` in a closing
            // `if [[ "${BASH_VERSINFO[0]}" ... fi` block at column 0: rename the function and put
            // a dispatcher in place of that block, instead of replacing what completes `cargo`.
            let own = own.replace("_cargo()", "_cargo_nimify()");
            let at = own.find("\nif [[ \"${BASH_VERSINFO[0]}\" -eq 4").ok_or_else(|| {
                CliError::msg(
                    "clap's bash script no longer ends with its registration block; cannot make it chain to cargo's",
                )
            })?;
            format!("{}{BASH_DISPATCH}", &own[..=at])
        }
        _ => generate(shell, crate::Cargo::command(), "cargo"),
    })
}

fn generate(shell: Shell, mut command: clap::Command, bin: &str) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, bin, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

const BASH_DISPATCH: &str = r#"
# `cargo nimify ...` is completed here; any other `cargo` command goes to the handler that
# completed `cargo` before this script was sourced (rustup's), if there was one. bash-completion
# loads that one on first use: load it now, or registering ours would keep it from ever loading.
if ! complete -p cargo >/dev/null 2>&1; then
    if declare -F __load_completion >/dev/null; then __load_completion cargo
    elif declare -F _completion_loader >/dev/null; then _completion_loader cargo
    fi
fi
__cargo_nimify_handler=$(complete -p cargo 2>/dev/null | sed -n 's/.*-F \([^ ]*\).*/\1/p')
# Sourced twice, the handler found is our own: keep the one found the first time.
if [[ $__cargo_nimify_handler != __cargo_nimify_dispatch ]]; then
    __cargo_nimify_previous=$__cargo_nimify_handler
fi
__cargo_nimify_dispatch() {
    if [[ ${COMP_WORDS[1]} == nimify ]]; then
        _cargo_nimify "$@"
    elif [[ -n $__cargo_nimify_previous && $__cargo_nimify_previous != __cargo_nimify_dispatch ]]; then
        "$__cargo_nimify_previous" "$@"
    fi
}
complete -F __cargo_nimify_dispatch -o bashdefault -o default cargo
"#;

//! How `cargo nimify` talks on the terminal, the way cargo does: right-aligned status verbs in
//! bold green, `error:` / `warning:` / `help:` / `note:` in their colours, progress bars that draw
//! only on a terminal, and `-q` / `-v` / `--color` / `--format` set once for the whole command.
//!
//! Colour follows `--color`, then `CARGO_TERM_COLOR`, then the terminal (`NO_COLOR` and
//! `CLICOLOR_FORCE` are honoured in `auto`); text written through [`anstream`] loses its styles
//! when colour is off, so one rendering serves both.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU8, Ordering};

use anstyle::{AnsiColor, Style};

/// Status verbs (`Compiling`, `Packed`): bold green, as cargo.
pub const GOOD: Style = AnsiColor::Green.on_default().bold();
/// `error:`: bold red.
pub const ERROR: Style = AnsiColor::Red.on_default().bold();
/// `warning:`: bold yellow.
pub const WARN: Style = AnsiColor::Yellow.on_default().bold();
/// `help:` and `note:`: bold cyan.
pub const HELP: Style = AnsiColor::Cyan.on_default().bold();

/// When to colour the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorWhen {
    /// Colour when stderr is a terminal (and `NO_COLOR` is not set).
    #[default]
    Auto,
    /// Always colour.
    Always,
    /// Never colour.
    Never,
}

impl ColorWhen {
    /// `--color WHEN` or `--color=WHEN` from the raw arguments, else `CARGO_TERM_COLOR`, else
    /// auto: clap needs the choice before it parses (to colour its own usage errors).
    /// `env` is `CARGO_TERM_COLOR`'s value.
    pub fn from_args_and_env(args: &[std::ffi::OsString], env: Option<String>) -> Self {
        let text = flag_value(args, "--color").or(env).unwrap_or_default();
        <Self as clap::ValueEnum>::from_str(&text, true).unwrap_or_default()
    }

    /// The same choice for clap's own messages.
    pub fn for_clap(self) -> clap::ColorChoice {
        match self {
            Self::Auto => clap::ColorChoice::Auto,
            Self::Always => clap::ColorChoice::Always,
            Self::Never => clap::ColorChoice::Never,
        }
    }
}

/// The last value of `--flag VALUE` or `--flag=VALUE` before any `--`, read before clap parses
/// (so that its own errors can follow `--color` and `--format`).
pub fn flag_value(args: &[std::ffi::OsString], flag: &str) -> Option<String> {
    let mut given = None;
    let mut iter = args.iter().map(|a| a.to_string_lossy());
    let prefix = format!("{flag}=");
    while let Some(arg) = iter.next() {
        if arg == "--" {
            break;
        }
        if arg == flag {
            given = iter.next().map(|v| v.into_owned());
        } else if let Some(v) = arg.strip_prefix(&prefix) {
            given = Some(v.to_string());
        }
    }
    given
}

/// How much to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors only (and the command's result on stdout).
    Quiet = 0,
    /// Status lines and warnings.
    Normal = 1,
    /// `-v`: also the commands run and the paths looked at.
    Verbose = 2,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(Verbosity::Normal as u8);

/// Sets colour and verbosity for the rest of the process.
pub fn configure(color: ColorWhen, verbosity: Verbosity) {
    let choice = match color {
        ColorWhen::Auto => anstream::ColorChoice::Auto,
        ColorWhen::Always => anstream::ColorChoice::Always,
        ColorWhen::Never => anstream::ColorChoice::Never,
    };
    choice.write_global();
    VERBOSITY.store(verbosity as u8, Ordering::Relaxed);
}

/// The verbosity [`configure`] set.
pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        _ => Verbosity::Verbose,
    }
}

/// `   Installed what`: the verb right-aligned in 12 columns, as cargo prints `   Compiling`.
/// Silent with `-q`.
pub fn status(verb: &str, what: impl std::fmt::Display) {
    if verbosity() >= Verbosity::Normal {
        anstream::eprintln!("{GOOD}{verb:>12}{GOOD:#} {what}");
    }
}

/// A status line shown only with `-v` (the commands run, the paths tried).
pub fn verbose(verb: &str, what: impl std::fmt::Display) {
    if verbosity() >= Verbosity::Verbose {
        anstream::eprintln!("{GOOD}{verb:>12}{GOOD:#} {what}");
    }
}

/// `warning: message`. Silent with `-q`, as cargo's warnings.
pub fn warn(message: impl std::fmt::Display) {
    if verbosity() >= Verbosity::Normal {
        anstream::eprintln!("{WARN}warning{WARN:#}: {message}");
    }
}

/// `note: message`. Silent with `-q`.
pub fn note(message: impl std::fmt::Display) {
    if verbosity() >= Verbosity::Normal {
        anstream::eprintln!("{HELP}note{HELP:#}: {message}");
    }
}

fn bar(total: Option<u64>) -> indicatif::ProgressBar {
    let bar = if verbosity() >= Verbosity::Normal && std::io::stderr().is_terminal() {
        indicatif::ProgressBar::with_draw_target(total, indicatif::ProgressDrawTarget::stderr())
    } else {
        indicatif::ProgressBar::hidden()
    };
    // An error that ends a transfer is printed on a clean line, not under a stale bar.
    bar.with_finish(indicatif::ProgressFinish::AndClear)
}

/// A byte counter for a transfer or a compression of `total` bytes (0: unknown), labelled like a
/// status line. Hidden when stderr is not a terminal or with `-q`, so logs and pipes get only
/// the status lines; cleared when dropped, so the status line that follows replaces it.
pub fn bytes_bar(verb: &str, total: u64) -> indicatif::ProgressBar {
    let bar = bar((total > 0).then_some(total));
    let colour = anstream::ColorChoice::global() != anstream::ColorChoice::Never;
    let prefix = if colour { "{prefix:>12.green.bold}" } else { "{prefix:>12}" };
    let template = format!("{prefix} [{{bar:30}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} {{eta}}");
    if let Ok(style) = indicatif::ProgressStyle::with_template(&template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(verb.to_string());
    bar
}

/// A writer that advances `bar` by every byte written through it.
pub struct Counted<W> {
    inner: W,
    bar: indicatif::ProgressBar,
}

impl<W> Counted<W> {
    /// Counts what is written into `inner` on `bar`.
    pub fn new(inner: W, bar: indicatif::ProgressBar) -> Self {
        Self { inner, bar }
    }

    /// The writer, after clearing the bar.
    pub fn into_inner(self) -> W {
        self.bar.finish_and_clear();
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(list: &[&str]) -> ColorWhen {
        let args: Vec<std::ffi::OsString> = list.iter().map(Into::into).collect();
        ColorWhen::from_args_and_env(&args, Some("never".into()))
    }

    #[test]
    fn color_flag_is_found_before_parsing_and_the_last_one_wins() {
        assert_eq!(pick(&["nimify", "--color", "always"]), ColorWhen::Always);
        assert_eq!(pick(&["nimify", "image", "--color=auto"]), ColorWhen::Auto);
        assert_eq!(pick(&["nimify", "--color=never", "--color", "Always"]), ColorWhen::Always);
        // No flag: CARGO_TERM_COLOR (here `never`); after `--`, arguments belong to someone else.
        assert_eq!(pick(&["nimify", "image"]), ColorWhen::Never);
        assert_eq!(pick(&["nimify", "--", "--color=always"]), ColorWhen::Never);
        // A bad value falls back to auto here; clap then rejects it with a usage error.
        assert_eq!(pick(&["nimify", "--color", "purple"]), ColorWhen::Auto);
    }

    #[test]
    fn counted_writes_advance_the_bar_and_keep_the_bytes() {
        let bar = indicatif::ProgressBar::hidden();
        let mut w = Counted::new(Vec::new(), bar.clone());
        std::io::Write::write_all(&mut w, b"hello world").expect("write");
        assert_eq!(bar.position(), 11);
        assert_eq!(w.into_inner(), b"hello world");
    }
}

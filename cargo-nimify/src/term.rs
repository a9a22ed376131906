//! How `cargo nimify` talks on the terminal: cargo's right-aligned status verbs, and progress
//! bars that draw only when stderr is a terminal.

use std::io::IsTerminal as _;

/// `   Installed what`: the verb right-aligned in 12 columns, as cargo prints `   Compiling`.
pub fn status(verb: &str, what: impl std::fmt::Display) {
    eprintln!("{verb:>12} {what}");
}

/// A byte counter for a transfer of `total` bytes (0: unknown), labelled like a status line.
/// Hidden when stderr is not a terminal, so logs and pipes get only the status lines.
pub fn bytes_bar(verb: &str, total: u64) -> indicatif::ProgressBar {
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::with_draw_target((total > 0).then_some(total), indicatif::ProgressDrawTarget::stderr())
    } else {
        indicatif::ProgressBar::hidden()
    };
    let template = "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}";
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(verb.to_string());
    bar
}

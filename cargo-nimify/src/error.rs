//! What can go wrong in a `cargo nimify` command, and how it is shown: the way cargo shows its
//! own errors, `error: <what failed>`, then `Caused by:` with each underlying error not already
//! in that line, then `help: <the next step>` where there is one.
//!
//! ```text
//! error: cannot write target/nimify/svc/image.json: No space left on device (os error 28)
//!
//! help: free some space and run the command again
//! ```

use std::error::Error as _;
use std::path::{Path, PathBuf};

/// An expected failure of a command (exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file-system operation on `path` failed: `cannot <op> <path>: <cause>`.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, as a verb phrase: `write`, `create`, `read the model`, ...
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// ONNX Runtime is missing or unusable (the message says how to get it).
    #[error(transparent)]
    OrtLib(#[from] nimify::__private::ortlib::OrtLibError),
    /// A record another command wrote (`image.json`, `<bin> manifest`) could not be read.
    #[error(transparent)]
    Record(#[from] nimify_model::contract::ContractError),
    /// A model file's signature could not be read.
    #[error("model {}: {source}", path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// What the reader found.
        source: nimify_model::ModelError,
    },
    /// Anything else, already phrased for the user, with the next step when there is one.
    #[error("{message}")]
    Failed {
        /// What went wrong.
        message: String,
        /// What to do about it.
        help: Option<String>,
    },
}

impl CliError {
    /// A failure phrased for the user, without a next step.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::Failed { message: message.into(), help: None }
    }

    /// A failure with the next step to take.
    pub fn with_help(message: impl Into<String>, help: impl Into<String>) -> Self {
        Self::Failed { message: message.into(), help: Some(help.into()) }
    }

    /// `cannot <op> <path>: <cause>` for `map_err`.
    pub fn io(op: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.as_ref().to_path_buf();
        move |source| Self::Io { op, path, source }
    }

    /// The next step, when one is known.
    pub fn help(&self) -> Option<String> {
        match self {
            Self::Failed { help, .. } => help.clone(),
            Self::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
                Some("free some space and run the command again".into())
            }
            Self::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                Some("check the path's owner and permissions, or pick another path".into())
            }
            _ => None,
        }
    }

    /// The message, the causes not already in it (outermost first) and the next step.
    fn parts(&self) -> (String, Vec<String>, Option<String>) {
        let message = self.to_string();
        let mut shown = message.clone();
        let mut causes = Vec::new();
        let mut next = self.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !shown.contains(&text) {
                causes.push(text.clone());
                shown.push_str(&text);
            }
            next = cause.source();
        }
        (message, causes, self.help())
    }

    /// A short name for the kind of failure, for programs reading `--format json`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::OrtLib(_) => "onnxruntime",
            Self::Record(_) => "record",
            Self::Model { .. } => "model",
            Self::Failed { .. } => "failed",
        }
    }

    /// The whole report with cargo's colours (`error:` bold red, `help:` bold cyan), for
    /// [`anstream`] to print or strip.
    pub fn styled(&self) -> String {
        use crate::term::{ERROR, HELP};
        let (message, causes, help) = self.parts();
        let mut out = format!("{ERROR}error{ERROR:#}: {message}");
        if !causes.is_empty() {
            out.push_str("\n\nCaused by:");
            for c in causes {
                out.push_str("\n  ");
                out.push_str(&c);
            }
        }
        if let Some(help) = help {
            out.push_str(&format!("\n\n{HELP}help{HELP:#}: {help}"));
        }
        out
    }

    /// The whole report, as printed on stderr without colour.
    pub fn render(&self) -> String {
        anstream::adapter::strip_str(&self.styled()).to_string()
    }

    /// The report as `--format json` prints it on stdout:
    /// `{"error": {"kind", "message", "causes": [...], "help": "..." | null}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let (message, causes, help) = self.parts();
        serde_json::json!({"error": {"kind": self.kind(), "message": message, "causes": causes, "help": help}})
    }
}

/// `.at("write", &path)?` on an I/O result: [`CliError::Io`] naming the operation and the path.
pub trait IoContext<T> {
    /// Names the operation and the path of a failed I/O call.
    fn at(self, op: &'static str, path: impl AsRef<Path>) -> Result<T, CliError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, op: &'static str, path: impl AsRef<Path>) -> Result<T, CliError> {
        self.map_err(CliError::io(op, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_name_the_operation_the_path_and_the_cause_on_one_line() {
        let err = std::fs::read("/nonexistent/image.json").at("read", "/nonexistent/image.json").expect_err("missing");
        let text = err.render();
        assert!(text.starts_with("error: cannot read /nonexistent/image.json: No such file"), "{text}");
        assert!(!text.contains("Caused by"), "the cause is already in the line: {text}");
        let full = CliError::Io {
            op: "write",
            path: "/x".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        assert!(full.render().ends_with("\n\nhelp: free some space and run the command again"), "{}", full.render());
    }

    #[test]
    fn causes_not_in_the_line_follow_as_cargo_shows_them() {
        #[derive(Debug, thiserror::Error)]
        #[error("the registry said no")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("cannot push")]
        struct Outer(#[source] Inner);
        let err = CliError::Io { op: "push", path: "/x".into(), source: std::io::Error::other(Outer(Inner)) };
        assert_eq!(err.render(), "error: cannot push /x: cannot push\n\nCaused by:\n  the registry said no");
        let err = CliError::with_help("no package here", "pass --manifest-path");
        assert_eq!(err.render(), "error: no package here\n\nhelp: pass --manifest-path");
        assert_eq!(
            err.styled(),
            "\x1b[1m\x1b[31merror\x1b[0m: no package here\n\n\x1b[1m\x1b[36mhelp\x1b[0m: pass --manifest-path"
        );
        assert_eq!(
            err.to_json(),
            serde_json::json!({"error": {"kind": "failed", "message": "no package here", "causes": [], "help": "pass --manifest-path"}})
        );
    }
}

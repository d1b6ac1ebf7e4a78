//! The harness's one error type. Every variant names what was run or awaited and carries what a person needs to
//! see the cause in a failing test's output: the command line, its exit status and output, or a log tail.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// Result alias for the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong while building a lab or running something in it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system or process call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with its path or command.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A command ran past its time limit and was killed.
    #[error("`{cmd}` did not finish within {after:?} and was killed{}", streams(.stdout, .stderr))]
    Timeout {
        /// The command line.
        cmd: String,
        /// The limit that passed.
        after: Duration,
        /// What it printed on stdout before it was killed.
        stdout: String,
        /// What it printed on stderr before it was killed.
        stderr: String,
    },
    /// A command exited unsuccessfully; `output` holds its status and output for callers that expect a failure.
    #[error("`{cmd}` failed ({}){}", .output.status, streams(&text(&.output.stdout), &text(&.output.stderr)))]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status, stdout and stderr.
        output: Output,
    },
    /// A condition, a process or a node was not ready in time, or exited while it was awaited.
    #[error("{what}{}", tail_block(.log_tail))]
    NotReady {
        /// What was awaited and how it ended.
        what: String,
        /// The end of the relevant log, if any.
        log_tail: String,
    },
    /// The `metac` binary was not where the harness looked.
    #[error(
        "metac binary not found at {}: run `cargo build --bin metac` (same profile as the tests) or set METAC_BIN",
        .path.display()
    )]
    NoMetacBin {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A tool the harness runs is not installed.
    #[error("`{tool}` not found in PATH: install the Debian package `{package}`")]
    MissingTool {
        /// The program name.
        tool: &'static str,
        /// The package that provides it.
        package: &'static str,
    },
    /// The kernel lacks a feature the call needs.
    #[error("{0}")]
    Unsupported(String),
    /// An argument is out of range.
    #[error("{0}")]
    InvalidArg(String),
}

impl Error {
    /// An [`Error::Io`] for `what`.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }
}

/// Bytes from a process as text, lossy.
pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn streams(stdout: &str, stderr: &str) -> String {
    let mut s = String::new();
    for (name, body) in [("stdout", stdout), ("stderr", stderr)] {
        let body = body.trim_end();
        if !body.is_empty() {
            s.push_str(&format!("\n--- {name} ---\n{}", last_lines(body, 60)));
        }
    }
    s
}

fn tail_block(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- log tail ---\n{}", tail.trim_end())
    }
}

/// The last `n` lines of `s`.
pub(crate) fn last_lines(s: &str, n: usize) -> &str {
    let mut idx = s.len();
    for _ in 0..n {
        match s[..idx].rfind('\n') {
            Some(i) => idx = i,
            None => return s,
        }
    }
    &s[idx + 1..]
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(last_lines("a\nb\nc", 5), "a\nb\nc");
        assert_eq!(last_lines("", 3), "");
        assert_eq!(last_lines("a\nb\n", 1), "");
    }
}

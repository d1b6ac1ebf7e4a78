//! The CLI's subcommands, one module per group (a kind's module holds its own clap `Cmd` and `run`), and the
//! output helpers they share: `--json` or text, tables, times and sizes.

pub mod binds;
pub mod compute;
pub mod containers;
pub mod file;
pub mod fs;
pub mod net;
pub mod node;
pub mod overlay;
pub mod refs;
pub mod status;
pub mod vm;

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Prints `v` as pretty JSON with `--json`, else as `text(v)`.
pub fn print<T: Serialize>(json: bool, v: &T, text: impl FnOnce(&T) -> String) {
    if json {
        // Through a `Value`, whose maps keep keys sorted: the output stays the same whatever the order of a
        // response type's fields, and scripts diffing it see no churn.
        let v = serde_json::to_value(v).expect("API types serialize");
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!("{}", printable(&text(v)));
    }
}

/// Text with every control character but newline shown as `?`. Names, addresses and reasons come from other nodes
/// (a resource's name is whatever its exporter chose): raw, an escape sequence in one could rewrite the user's
/// terminal. JSON output escapes them by itself.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() && c != '\n' { '?' } else { c }).collect()
}

/// Columns padded to their widest cell, two spaces apart; `(none)` for no rows.
pub fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows.collect();
    if rows.is_empty() {
        return "(none)".into();
    }
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

/// A JSON value as a cell: strings bare, null as `-`.
pub fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

/// The first 16 characters of a node key: enough to tell nodes apart in a table.
pub fn short(key: &str) -> String {
    key.chars().take(16).collect()
}

/// `s` percent-encoded for a URL path segment or query value, so that whatever a user typed reaches the node as
/// one value (the node decodes it).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Unix seconds as an RFC 3339 UTC time.
pub fn rfc3339(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

/// Milliseconds since an event, as `now` or `Ns ago`.
pub fn ago(ms: u64) -> String {
    if ms == 0 {
        "now".into()
    } else {
        format!("{}s ago", ms / 1000)
    }
}

/// A byte count in B, KiB, MiB or GiB.
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attack (issue 10, finding 8): a peer names a resource "\x1b]0;pwned\x07\x1b[2J" and `metac resources`
    /// printed it raw into the user's terminal.
    #[test]
    fn remote_text_cannot_drive_the_terminal() {
        let name = "disk\x1b]0;pwned\x07\x1b[2J\r";
        let out = printable(&table(&["NAME"], std::iter::once(vec![name.to_string()])));
        assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        assert!(out.contains("disk?]0;pwned??[2J"), "{out:?}");
        assert_eq!(printable("a\nb\tc"), "a\nb?c");
    }
}

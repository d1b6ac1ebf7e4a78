//! The QEMU Machine Protocol, as much of it as the node uses: connect to a VM's QMP socket, leave negotiation mode
//! (`qmp_capabilities`), run a command (`query-status`, `system_powerdown`, `quit`) and read its answer. QMP is one
//! JSON object per line; events arrive between answers and are skipped. Every read is bounded in size and time.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The longest line read from qemu (its answers to our commands are a few hundred bytes).
const MAX_LINE: u64 = 64 << 10;
/// How long one exchange may take.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// What failed talking to qemu.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached or broke.
    #[error("QMP: {0}")]
    Io(#[from] std::io::Error),
    /// qemu did not answer in time.
    #[error("QMP: qemu did not answer {0:?} within {ANSWER_WAIT:?}")]
    Timeout(String),
    /// qemu sent something that is not QMP.
    #[error("QMP: {0}")]
    Protocol(String),
    /// qemu refused the command.
    #[error("QMP {command}: {message}")]
    Refused {
        /// The command.
        command: String,
        /// qemu's `desc`.
        message: String,
    },
}

/// A QMP session, past negotiation.
pub struct Qmp {
    rd: BufReader<tokio::io::ReadHalf<UnixStream>>,
    wr: tokio::io::WriteHalf<UnixStream>,
}

impl Qmp {
    /// Connects to `socket` and negotiates.
    pub async fn connect(socket: &Path) -> Result<Qmp, Error> {
        let s = UnixStream::connect(socket).await?;
        let (rd, wr) = tokio::io::split(s);
        let mut q = Qmp { rd: BufReader::new(rd), wr };
        let greeting =
            tokio::time::timeout(ANSWER_WAIT, q.line()).await.map_err(|_| Error::Timeout("the greeting".into()))??;
        if greeting.get("QMP").is_none() {
            return Err(Error::Protocol(format!("expected the QMP greeting, got {greeting}")));
        }
        q.execute("qmp_capabilities").await?;
        Ok(q)
    }

    /// Runs `command` and returns its `return` value.
    pub async fn execute(&mut self, command: &str) -> Result<Value, Error> {
        let mut line = serde_json::json!({ "execute": command }).to_string();
        line.push('\n');
        self.wr.write_all(line.as_bytes()).await?;
        tokio::time::timeout(ANSWER_WAIT, async {
            loop {
                let v = self.line().await?;
                if let Some(r) = v.get("return") {
                    return Ok(r.clone());
                }
                if let Some(e) = v.get("error") {
                    let message = e.get("desc").and_then(Value::as_str).unwrap_or("no reason given").to_string();
                    return Err(Error::Refused { command: command.to_string(), message });
                }
                // An event ({"event": ...}): not the answer.
            }
        })
        .await
        .map_err(|_| Error::Timeout(command.to_string()))?
    }

    async fn line(&mut self) -> Result<Value, Error> {
        let mut buf = Vec::new();
        let n = (&mut self.rd).take(MAX_LINE).read_until(b'\n', &mut buf).await?;
        if n == 0 {
            return Err(Error::Protocol("qemu closed the QMP connection".into()));
        }
        if buf.last() != Some(&b'\n') {
            return Err(Error::Protocol(format!("a line longer than {MAX_LINE} bytes")));
        }
        serde_json::from_slice(&buf).map_err(|e| Error::Protocol(format!("not JSON: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A stand-in qemu: greets, then answers each command line with `answers` in turn, after an event.
    async fn fake(listener: UnixListener, answers: Vec<&'static str>) -> Vec<String> {
        let (s, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = tokio::io::split(s);
        let mut rd = BufReader::new(rd);
        wr.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").await.unwrap();
        let mut got = Vec::new();
        for a in answers {
            let mut l = String::new();
            rd.read_line(&mut l).await.unwrap();
            got.push(l.trim().to_string());
            wr.write_all(b"{\"event\": \"POWERDOWN\", \"timestamp\": {}}\r\n").await.unwrap();
            wr.write_all(a.as_bytes()).await.unwrap();
            wr.write_all(b"\r\n").await.unwrap();
        }
        got
    }

    #[tokio::test]
    async fn negotiates_runs_commands_and_reports_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp");
        let l = UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(fake(
            l,
            vec![
                "{\"return\": {}}",
                "{\"return\": {\"status\": \"running\", \"running\": true}}",
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no ACPI\"}}",
            ],
        ));
        let mut q = Qmp::connect(&sock).await.unwrap();
        assert_eq!(q.execute("query-status").await.unwrap()["status"], "running");
        let e = q.execute("system_powerdown").await.unwrap_err().to_string();
        assert_eq!(e, "QMP system_powerdown: no ACPI");
        let got = server.await.unwrap();
        assert_eq!(
            got,
            [
                "{\"execute\":\"qmp_capabilities\"}",
                "{\"execute\":\"query-status\"}",
                "{\"execute\":\"system_powerdown\"}"
            ]
        );
    }
}

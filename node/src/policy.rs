//! The overlay's inbound policy, as a tailnet's ACLs: the overlay must not open every service of the host to every
//! node of the mesh. In a public mesh (no mesh key) a node accepts over its TUN device only ICMPv6 echo (and the
//! ICMPv6 errors path MTU discovery needs) and the replies to its own connections; in a private mesh it accepts
//! everything from members. `metac overlay allow|deny PORT[/tcp|udp] [--from NODE]` adds rules. Packets that came in
//! on the TUN device for any address but this node's are never forwarded.
//!
//! The kernel enforces it: the node installs one nftables table of its own (`inet metac_<tun>`), replaces it whole
//! on every change (one `nft -f` transaction) and deletes it when the overlay stops. Connection tracking (replies to
//! our own connections) comes with it for free, and the overlay's data path is not touched.

use std::fmt;
use std::io::Write;
use std::net::Ipv6Addr;
use std::process::{Command, Stdio};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Accept matching packets.
    Allow,
    /// Drop matching packets (before any allow).
    Deny,
}

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// One rule: `allow 22/tcp from NODE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// What to do.
    pub action: Action,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
    /// Only from this node's overlay address (its key, hex, is in `from_node`).
    pub from: Option<Ipv6Addr>,
    /// The node key the rule was given for, hex, for display.
    pub from_node: Option<String>,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }

    /// The nftables verdict.
    fn verdict(self) -> &'static str {
        match self {
            Action::Allow => "accept",
            Action::Deny => "drop",
        }
    }
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// `PORT[/tcp|udp]`, as the CLI takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16, pub Proto);

impl FromStr for Port {
    type Err = String;

    fn from_str(s: &str) -> Result<Port, String> {
        let (port, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => return Err(format!("{s:?}: protocol {other:?} is not tcp or udp")),
            None => (s, Proto::Tcp),
        };
        match port.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is not PORT[/tcp|udp] with a port from 1 to 65535")),
            Ok(p) => Ok(Port(p, proto)),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.action.as_str(), self.port, self.proto.as_str())?;
        if let Some(n) = &self.from_node {
            write!(f, " from {}", &n[..n.len().min(16)])?;
        }
        Ok(())
    }
}

/// The policy of one node's overlay.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The TUN device.
    pub tun: String,
    /// This node's overlay address.
    pub addr: Ipv6Addr,
    /// A private mesh (members are trusted with every port).
    pub private: bool,
    /// The rules, in the order given.
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The nftables table's name: one per TUN device, so that nodes on one host keep out of each other's way.
    pub fn table(&self) -> String {
        let tun: String = self.tun.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        format!("metac_{tun}")
    }

    /// What the default lets in, in words.
    pub fn default_text(&self) -> &'static str {
        if self.private {
            "private mesh: members reach every port"
        } else {
            "public mesh: ICMPv6 echo and the replies to this node's own connections"
        }
    }

    /// The nftables script that replaces the table (idempotent: it creates the table if missing, then deletes
    /// and recreates it in the same transaction).
    pub fn script(&self) -> String {
        let t = self.table();
        let tun = &self.tun;
        let mut rules = String::new();
        // Denials first, so that `deny` wins over `allow` and over a private mesh's default.
        let ordered = self
            .rules
            .iter()
            .filter(|r| r.action == Action::Deny)
            .chain(self.rules.iter().filter(|r| r.action == Action::Allow));
        for r in ordered {
            let from = r.from.map(|a| format!("ip6 saddr {a} ")).unwrap_or_default();
            rules.push_str(&format!("    {from}{} dport {} {}\n", r.proto.as_str(), r.port, r.action.verdict()));
        }
        let default = if self.private { "accept" } else { "drop" };
        format!(
            "table inet {t} {{}}\n\
             delete table inet {t}\n\
             table inet {t} {{\n\
             \x20 chain input {{\n\
             \x20   type filter hook input priority filter; policy accept;\n\
             \x20   iifname \"{tun}\" jump overlay\n\
             \x20 }}\n\
             \x20 chain overlay {{\n\
             \x20   ip6 daddr != {addr} drop\n\
             \x20   ct state established,related accept\n\
             \x20   ct state invalid drop\n\
             \x20   icmpv6 type {{ echo-request, destination-unreachable, packet-too-big, time-exceeded, parameter-problem }} accept\n\
             {rules}\
             \x20   {default}\n\
             \x20 }}\n\
             \x20 chain forward {{\n\
             \x20   type filter hook forward priority filter; policy accept;\n\
             \x20   iifname \"{tun}\" drop\n\
             \x20 }}\n\
             }}\n",
            addr = self.addr,
        )
    }

    /// Installs (or replaces) the table.
    pub fn apply(&self) -> Result<(), String> {
        nft(&self.script())
    }

    /// Removes the table (at stop); nothing if it is gone.
    pub fn remove(&self) {
        let t = self.table();
        let _ = nft(&format!("table inet {t} {{}}\ndelete table inet {t}\n"));
    }
}

/// Runs an nftables script.
fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run nft ({e}): the overlay's inbound policy needs nftables (apt-get install nftables)")
        })?;
    child.stdin.take().expect("piped stdin").write_all(script.as_bytes()).map_err(|e| format!("nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft refused the overlay's inbound policy: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(private: bool, rules: Vec<Rule>) -> Policy {
        Policy { tun: "metac0".into(), addr: "fd6f:e1da:f01c::1".parse().unwrap(), private, rules }
    }

    #[test]
    fn ports_parse_with_a_default_of_tcp() {
        assert_eq!("22".parse(), Ok(Port(22, Proto::Tcp)));
        assert_eq!("53/udp".parse(), Ok(Port(53, Proto::Udp)));
        assert!("0".parse::<Port>().is_err());
        assert!("22/sctp".parse::<Port>().unwrap_err().contains("not tcp or udp"));
        assert!("ssh".parse::<Port>().unwrap_err().contains("PORT[/tcp|udp]"));
    }

    /// Attack (issue 10, finding 4): decrypted packets reached every service of the host.
    #[test]
    fn a_public_mesh_drops_all_but_echo_replies_and_allowed_ports() {
        let from = "fd6f:e1da:f01c::2".parse().unwrap();
        let p = policy(
            false,
            vec![
                Rule { action: Action::Allow, port: 5201, proto: Proto::Tcp, from: None, from_node: None },
                Rule {
                    action: Action::Deny,
                    port: 22,
                    proto: Proto::Tcp,
                    from: Some(from),
                    from_node: Some("ab".into()),
                },
            ],
        );
        let s = p.script();
        assert!(s.contains("iifname \"metac0\" jump overlay"));
        assert!(s.contains("ip6 daddr != fd6f:e1da:f01c::1 drop"), "only packets for this node");
        assert!(s.contains("ct state established,related accept"));
        assert!(s.contains("echo-request"));
        let deny = s.find("ip6 saddr fd6f:e1da:f01c::2 tcp dport 22 drop").unwrap();
        let allow = s.find("tcp dport 5201 accept").unwrap();
        assert!(deny < allow, "denials come first");
        assert!(s.contains("chain forward") && s.contains("iifname \"metac0\" drop"), "nothing is forwarded");
        assert!(s.contains("    drop\n  }"), "the default of a public mesh is drop: {s}");
        assert_eq!(p.table(), "metac_metac0");
    }

    #[test]
    fn a_private_mesh_accepts_members_unless_denied() {
        let s = policy(true, vec![]).script();
        assert!(s.contains("    accept\n  }"), "{s}");
        assert!(s.contains("ip6 daddr != fd6f:e1da:f01c::1 drop"));
    }
}

//! What a node adverts of its tunnel: the string in the `tunnel` field of its signed advert. The format is
//! `wg/1 port=PORT epoch=HEX`: the UDP port its tunnels listen on, and a random number drawn at every start, so
//! that peers notice a restart (their sessions with the old process are dead) and handshake again at once. Keys
//! other than these are ignored, so later versions can add some.

use std::fmt;

/// The longest tunnel string accepted.
pub const MAX_LEN: usize = 256;

/// A node's tunnel endpoint as adverted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelAdvert {
    /// UDP port of its tunnels.
    pub port: u16,
    /// Changes at every start of the node.
    pub epoch: u64,
}

/// A tunnel string that cannot be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Too long.
    #[error("tunnel advert is {0} bytes, more than {MAX_LEN}")]
    TooLong(usize),
    /// Not a version this node understands.
    #[error("tunnel advert {0:?} does not start with wg/1")]
    Version(String),
    /// A field is missing or malformed.
    #[error("tunnel advert has a bad or missing {0}")]
    Field(&'static str),
}

impl fmt::Display for TunnelAdvert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wg/1 port={} epoch={:x}", self.port, self.epoch)
    }
}

impl std::str::FromStr for TunnelAdvert {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        if s.len() > MAX_LEN {
            return Err(ParseError::TooLong(s.len()));
        }
        let mut words = s.split_ascii_whitespace();
        let version = words.next().unwrap_or_default();
        if version != "wg/1" {
            return Err(ParseError::Version(version.chars().take(16).collect()));
        }
        let (mut port, mut epoch) = (None, None);
        for w in words {
            match w.split_once('=') {
                Some(("port", v)) => port = v.parse::<u16>().ok().filter(|p| *p != 0),
                Some(("epoch", v)) => epoch = u64::from_str_radix(v, 16).ok(),
                _ => {}
            }
        }
        Ok(TunnelAdvert {
            port: port.ok_or(ParseError::Field("port"))?,
            epoch: epoch.ok_or(ParseError::Field("epoch"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let t = TunnelAdvert { port: 51820, epoch: 0xdead_beef };
        assert_eq!(t.to_string(), "wg/1 port=51820 epoch=deadbeef");
        assert_eq!(t.to_string().parse::<TunnelAdvert>(), Ok(t));
        assert_eq!("wg/1 epoch=1 port=9 later=x".parse::<TunnelAdvert>(), Ok(TunnelAdvert { port: 9, epoch: 1 }));
        assert_eq!("wg/2 port=1 epoch=1".parse::<TunnelAdvert>(), Err(ParseError::Version("wg/2".into())));
        assert_eq!("wg/1 port=0 epoch=1".parse::<TunnelAdvert>(), Err(ParseError::Field("port")));
        assert_eq!("wg/1 port=1".parse::<TunnelAdvert>(), Err(ParseError::Field("epoch")));
        assert_eq!("".parse::<TunnelAdvert>(), Err(ParseError::Version(String::new())));
        assert!(matches!("x".repeat(300).parse::<TunnelAdvert>(), Err(ParseError::TooLong(300))));
    }
}

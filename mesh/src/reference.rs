//! Refs: what users pass around to share a resource (DESIGN section 3).
//!
//! A [`Ref`] is `ref://[OVERLAY_ADDR]/TOKEN`: the overlay address of the node that issued the token, and the
//! [`Token`] in base64url. The address says where to bind; the token says what the bearer may do there. Parsing
//! is bounded by the token's own limits ([`MAX_TOKEN_TEXT`](crate::token::MAX_TOKEN_TEXT)) and checks that the
//! address is the issuer's, so an altered address is caught before anyone dials it.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::identity::is_overlay_addr;
use crate::token::{self, Token};

/// Why a string is not a ref.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Token(#[from] token::Error),
    #[error("{0:?} is not a ref: refs look like ref://[fd6f:e1da:f01c:...]/TOKEN")]
    NotARef(String),
    #[error("{0:?} in the ref is not an IPv6 address; copy the whole ref again")]
    BadAddr(String),
    #[error("address {0} is not a metac overlay address (fd6f:e1da:f01c::/48); the ref is damaged")]
    NotOverlayAddr(Ipv6Addr),
    #[error(
        "address {addr} does not belong to the token's issuer (its address is {issuer_addr}); the ref was altered"
    )]
    AddrMismatch { addr: Ipv6Addr, issuer_addr: Ipv6Addr },
}

/// A token with the overlay address of the node that issued it: `ref://[ADDR]/TOKEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ref {
    /// The issuer's overlay address.
    pub addr: Ipv6Addr,
    /// The token.
    pub token: Token,
}

impl Ref {
    /// The ref for `token`, at its issuer's overlay address.
    pub fn new(token: Token) -> Ref {
        Ref { addr: token.issuer().overlay_addr(), token }
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ref://[{}]/{}", self.addr, self.token.to_base64())
    }
}

impl FromStr for Ref {
    type Err = Error;

    /// Parses `ref://[ADDR]/TOKEN`, ignoring surrounding whitespace, and checks that ADDR is the issuer's address.
    fn from_str(s: &str) -> Result<Ref, Error> {
        let s = s.trim();
        let not_a_ref = || Error::NotARef(s.chars().take(40).collect());
        let rest = s.strip_prefix("ref://[").ok_or_else(not_a_ref)?;
        let (addr, text) = rest.split_once("]/").ok_or_else(not_a_ref)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| Error::BadAddr(addr.chars().take(45).collect()))?;
        if !is_overlay_addr(&addr) {
            return Err(Error::NotOverlayAddr(addr));
        }
        let token = Token::from_base64(text)?;
        let issuer_addr = token.issuer().overlay_addr();
        if addr != issuer_addr {
            return Err(Error::AddrMismatch { addr, issuer_addr });
        }
        Ok(Ref { addr, token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Rights;
    use crate::token::tests::{bearer_of, fs_token, ident, token};
    use proptest::prelude::*;

    #[test]
    fn refs_round_trip_and_parse_errors() {
        let (issuer, t) = fs_token(Rights::READ);
        let r = Ref::new(t.clone());
        let s = r.to_string();
        assert!(s.starts_with(&format!("ref://[{}]/", issuer.overlay_addr())), "{s}");
        assert_eq!(format!("  {s}\n").parse::<Ref>().unwrap(), r);

        let b64 = t.to_base64();
        let other = ident(2).overlay_addr();
        let err = |s: &str| s.parse::<Ref>().unwrap_err();
        assert!(matches!(err("http://x"), Error::NotARef(_)));
        assert!(matches!(err("ref://fd6f::1/abc"), Error::NotARef(_)));
        assert!(matches!(err("ref://[fd6f::1]abc"), Error::NotARef(_)));
        assert!(matches!(err(&format!("ref://[fd6f::g]/{b64}")), Error::BadAddr(_)));
        assert!(matches!(err(&format!("ref://[fd00::1]/{b64}")), Error::NotOverlayAddr(_)));
        assert!(matches!(
            err(&format!("ref://[{other}]/{}", "A".repeat(6000))),
            Error::Token(token::Error::TextTooLong { .. })
        ));
        assert!(matches!(err(&format!("ref://[{other}]/{b64}!")), Error::Token(token::Error::Base64(_))));
        assert!(matches!(err(&format!("ref://[{other}]/AAAA")), Error::Token(token::Error::BlockCount { count: 0 })));
        let e = err(&format!("ref://[{other}]/{b64}"));
        assert!(matches!(e, Error::AddrMismatch { .. }));
        assert!(e.to_string().contains("does not belong to the token's issuer"), "{e}");
        assert!(matches!(err(&format!("'{s}'")), Error::NotARef(_)));
    }

    proptest! {
        #[test]
        fn prop_ref_round_trip((issuer, t) in token()) {
            let r = Ref::new(t);
            let back: Ref = r.to_string().parse().unwrap();
            prop_assert_eq!(&back, &r);
            prop_assert!(back.token.verify(&issuer.public(), 0, &bearer_of(&back.token), |_| false).is_ok());
        }

        #[test]
        fn prop_parse_never_panics(s in ".{0,300}", tail in "[A-Za-z0-9_-]{0,300}") {
            let _ = s.parse::<Ref>();
            let _ = format!("ref://[{}]/{tail}", ident(1).overlay_addr()).parse::<Ref>();
        }
    }
}

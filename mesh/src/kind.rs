//! Resource kinds and the rights a capability token can grant on them.
//!
//! Every token names one [`Kind`] and a [`Rights`] set. Rights are plain bits so that narrowing a token is a subset
//! check; what each bit allows depends on the kind, and [`Kind::rights`] lists the bits that mean something for it.
//!
//! On the wire a kind is an open number (postcard varint), not a closed enum index: a node meets kinds added after
//! it was built, in adverts it must still accept, relay and list, and in tokens it must refuse with a clear reason.
//! The numbers of the known kinds are the indices they always had, so the encoding is unchanged for them; an unknown
//! number decodes to [`Kind::Unknown`]. In JSON a kind is its name (`"file"`), or `"kind-N"` when unknown.

use std::fmt;
use std::ops::{BitAnd, BitOr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors parsing a kind or a rights list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("unknown resource kind {0:?}: use one of file, fs, net, usb, desktop, compute")]
    UnknownKind(String),
    #[error("unknown right {0:?}: use a comma-separated list of read, write, admin, exec (or \"none\")")]
    UnknownRight(String),
}

/// What sort of resource a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A single file or block device, served over NBD.
    /// read: read its bytes; write: write its bytes; admin: resize it, manage its export.
    File,
    /// A directory tree. read: look up, list and read; write: create, change, rename and remove entries;
    /// admin: change ownership, permissions and extended attributes, manage the export.
    Fs,
    /// An Ethernet segment. read: receive frames; write: send frames; admin: change the segment's settings.
    Net,
    /// A USB device. read: list and describe it; write: attach it and do transfers; admin: reset it, manage the export.
    Usb,
    /// A graphical desktop. read: view the screen; write: send keyboard and pointer input; admin: manage the export.
    Desktop,
    /// The right to run processes on a node. exec: start and control containers; admin: manage others' containers.
    Compute,
    /// A kind this build does not know (from a newer metac), by its wire number. Adverts of it are kept and relayed;
    /// tokens of it grant nothing here.
    Unknown(u32),
}

impl Kind {
    /// All kinds, in a stable order.
    pub const ALL: [Kind; 6] = [Kind::File, Kind::Fs, Kind::Net, Kind::Usb, Kind::Desktop, Kind::Compute];

    /// The rights that mean something for this kind; a token of this kind may grant only these.
    pub fn rights(self) -> Rights {
        match self {
            Kind::File | Kind::Fs | Kind::Net | Kind::Usb | Kind::Desktop => {
                Rights::READ | Rights::WRITE | Rights::ADMIN
            }
            Kind::Compute => Rights::EXEC | Rights::ADMIN,
            Kind::Unknown(_) => Rights::NONE,
        }
    }

    /// The number that stands for this kind on the wire.
    pub fn wire_id(self) -> u32 {
        match self {
            Kind::File => 0,
            Kind::Fs => 1,
            Kind::Net => 2,
            Kind::Usb => 3,
            Kind::Desktop => 4,
            Kind::Compute => 5,
            Kind::Unknown(n) => n,
        }
    }

    /// The kind a wire number stands for; numbers this build does not know give [`Kind::Unknown`].
    pub fn from_wire_id(n: u32) -> Kind {
        Kind::ALL.into_iter().find(|k| k.wire_id() == n).unwrap_or(Kind::Unknown(n))
    }

    /// False for [`Kind::Unknown`].
    pub fn is_known(self) -> bool {
        !matches!(self, Kind::Unknown(_))
    }

    /// The rights an export grants when none are asked for: all of [`Kind::rights`].
    pub fn default_rights(self) -> Rights {
        self.rights()
    }

    /// The lowercase name used on the command line and in refs; `"unknown"` for a kind this build does not know
    /// (its [`Display`](fmt::Display) form names the number).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Fs => "fs",
            Kind::Net => "net",
            Kind::Usb => "usb",
            Kind::Desktop => "desktop",
            Kind::Compute => "compute",
            Kind::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Unknown(n) => write!(f, "kind-{n}"),
            k => f.write_str(k.as_str()),
        }
    }
}

impl FromStr for Kind {
    type Err = Error;

    /// Parses a kind's name, or `kind-N` (as [`Display`](fmt::Display) writes an unknown kind).
    fn from_str(s: &str) -> Result<Kind, Error> {
        if let Some(k) = Kind::ALL.into_iter().find(|k| k.as_str() == s) {
            return Ok(k);
        }
        match s.strip_prefix("kind-").and_then(|n| n.parse::<u32>().ok()) {
            Some(n) => Ok(Kind::from_wire_id(n)),
            None => Err(Error::UnknownKind(s.to_string())),
        }
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            // postcard writes a u32 as the same varint it wrote for the old enum's variant index.
            s.serialize_u32(self.wire_id())
        }
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Kind, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            u32::deserialize(d).map(Kind::from_wire_id)
        }
    }
}

/// A set of rights, as bits. The empty set grants nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rights(pub u32);

/// Names of the known bits, in display order.
const NAMES: [(Rights, &str); 4] =
    [(Rights::READ, "read"), (Rights::WRITE, "write"), (Rights::ADMIN, "admin"), (Rights::EXEC, "exec")];

impl Rights {
    /// No rights.
    pub const NONE: Rights = Rights(0);
    /// Read or observe the resource (per kind, see [`Kind`]).
    pub const READ: Rights = Rights(1);
    /// Change the resource or send to it (per kind, see [`Kind`]).
    pub const WRITE: Rights = Rights(1 << 1);
    /// Manage the resource beyond reading and writing (per kind, see [`Kind`]).
    pub const ADMIN: Rights = Rights(1 << 2);
    /// Run processes (compute only).
    pub const EXEC: Rights = Rights(1 << 3);

    /// True if every right in `other` is in `self`.
    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// True if every right in `self` is in `other`.
    pub fn is_subset_of(self, other: Rights) -> bool {
        other.contains(self)
    }

    /// The rights in both sets.
    pub fn intersect(self, other: Rights) -> Rights {
        Rights(self.0 & other.0)
    }

    /// The rights in `self` but not in `other`.
    pub fn remove(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }

    /// True if no right is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl BitOr for Rights {
    type Output = Rights;

    fn bitor(self, rhs: Rights) -> Rights {
        Rights(self.0 | rhs.0)
    }
}

impl BitAnd for Rights {
    type Output = Rights;

    fn bitand(self, rhs: Rights) -> Rights {
        self.intersect(rhs)
    }
}

impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        let mut sep = "";
        for (bit, name) in NAMES {
            if self.contains(bit) {
                write!(f, "{sep}{name}")?;
                sep = ",";
            }
        }
        // Bits no name is known for can only come from a newer or forged token; show them rather than hide them.
        let unknown = NAMES.iter().fold(*self, |r, (bit, _)| r.remove(*bit));
        if !unknown.is_empty() {
            write!(f, "{sep}{:#x}", unknown.0)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rights({self})")
    }
}

impl FromStr for Rights {
    type Err = Error;

    /// Parses `read,write` style lists; `none` is the empty set.
    fn from_str(s: &str) -> Result<Rights, Error> {
        if s.trim() == "none" {
            return Ok(Rights::NONE);
        }
        s.split(',').map(str::trim).try_fold(Rights::NONE, |acc, name| {
            let bit = NAMES.iter().find(|(_, n)| *n == name).map(|(b, _)| *b);
            bit.map(|b| acc | b).ok_or_else(|| Error::UnknownRight(name.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in Kind::ALL {
            assert_eq!(k.to_string().parse::<Kind>(), Ok(k));
        }
        let err = "disk".parse::<Kind>().unwrap_err().to_string();
        assert!(err.contains("\"disk\"") && err.contains("file, fs, net, usb, desktop, compute"), "{err}");
    }

    #[test]
    fn rights_set_operations() {
        let rw = Rights::READ | Rights::WRITE;
        assert!(rw.contains(Rights::READ));
        assert!(!rw.contains(Rights::ADMIN));
        assert!(Rights::READ.is_subset_of(rw));
        assert!(!rw.is_subset_of(Rights::READ));
        assert_eq!(rw.intersect(Rights::WRITE | Rights::ADMIN), Rights::WRITE);
        assert_eq!(rw.remove(Rights::READ), Rights::WRITE);
        assert!(rw.remove(rw).is_empty());
        assert!(Rights::NONE.is_subset_of(Rights::NONE));
    }

    #[test]
    fn rights_display_and_parse() {
        assert_eq!((Rights::WRITE | Rights::READ).to_string(), "read,write");
        assert_eq!(Rights::NONE.to_string(), "none");
        assert_eq!(Rights(1 | 32).to_string(), "read,0x20");
        assert_eq!("read,write".parse(), Ok(Rights::READ | Rights::WRITE));
        assert_eq!("admin, exec".parse(), Ok(Rights::ADMIN | Rights::EXEC));
        assert_eq!("none".parse(), Ok(Rights::NONE));
        assert_eq!("read,fly".parse::<Rights>(), Err(Error::UnknownRight("fly".into())));
        assert_eq!("".parse::<Rights>(), Err(Error::UnknownRight("".into())));
        for bits in 0..16 {
            assert_eq!(Rights(bits).to_string().parse(), Ok(Rights(bits)));
        }
    }

    #[test]
    fn kinds_are_open_numbers_on_the_wire() {
        // The bytes the closed enum wrote: its variant index as a postcard varint. Pinned: never renumber.
        for (i, k) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(postcard::to_allocvec(&k).unwrap(), vec![i as u8], "{k}");
            assert_eq!(postcard::from_bytes::<Kind>(&[i as u8]).unwrap(), k);
        }
        // A kind from a newer metac decodes, displays, and encodes back to the same number.
        let k: Kind = postcard::from_bytes(&[0xac, 0x02]).unwrap();
        assert_eq!(k, Kind::Unknown(300));
        assert_eq!(postcard::to_allocvec(&k).unwrap(), vec![0xac, 0x02]);
        assert_eq!(k.to_string(), "kind-300");
        assert_eq!("kind-300".parse(), Ok(k));
        assert_eq!("kind-0".parse(), Ok(Kind::File));
        assert!(k.rights().is_empty() && !k.is_known());
        assert_eq!(serde_json::to_string(&Kind::Fs).unwrap(), "\"fs\"");
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"kind-300\"");
        assert_eq!(serde_json::from_str::<Kind>("\"kind-300\"").unwrap(), k);
        assert!(serde_json::from_str::<Kind>("\"disk\"").is_err());
    }

    #[test]
    fn kind_rights() {
        assert_eq!(Kind::Fs.rights(), Rights::READ | Rights::WRITE | Rights::ADMIN);
        assert_eq!(Kind::Desktop.default_rights(), Rights::READ | Rights::WRITE | Rights::ADMIN);
        assert_eq!(Kind::Compute.rights(), Rights::EXEC | Rights::ADMIN);
        assert!(!Kind::Compute.rights().contains(Rights::READ));
    }
}

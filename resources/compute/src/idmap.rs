//! The user namespace of a rootless container: which ids inside stand for which ids outside. Root inside is always
//! the container's owner outside. When the owner has subordinate ids in `/etc/subuid` and `/etc/subgid` (as
//! `newuidmap` would grant them), ids 1..=N inside map to that range, so a distribution's rootfs with its system
//! users works; without them, the owner's id is the only one mapped (and `setgroups` is denied, as an
//! unprivileged runtime must). The shim is root and writes the maps itself, within exactly what those files grant.

use std::fs;

/// Most subordinate ids mapped (a distribution needs up to 65534, `nobody`).
pub const MAX_SUB: u32 = 65536;

/// One line of `uid_map` or `gid_map`: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The first id inside.
    pub inside: u32,
    /// The first id outside.
    pub outside: u32,
    /// How many.
    pub count: u32,
}

/// A rootless container's maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maps {
    /// User ids.
    pub uids: Vec<Range>,
    /// Group ids.
    pub gids: Vec<Range>,
}

impl Maps {
    /// The maps for `uid`:`gid` (named `name` in /etc/passwd, if it is there), given the text of /etc/subuid and
    /// /etc/subgid.
    pub fn new(uid: u32, gid: u32, name: Option<&str>, subuid: &str, subgid: &str) -> Maps {
        let with_sub = |id: u32, text: &str| {
            let mut v = vec![Range { inside: 0, outside: id, count: 1 }];
            if let Some((start, count)) = sub_range(text, id, name) {
                v.push(Range { inside: 1, outside: start, count: count.min(MAX_SUB) });
            }
            v
        };
        Maps { uids: with_sub(uid, subuid), gids: with_sub(gid, subgid) }
    }

    /// The maps of this host's files for `uid`:`gid`.
    pub fn of_host(uid: u32, gid: u32) -> Maps {
        let read = |p: &str| fs::read_to_string(p).unwrap_or_default();
        let passwd = read("/etc/passwd");
        let name = user_name(&passwd, uid);
        Maps::new(uid, gid, name.as_deref(), &read("/etc/subuid"), &read("/etc/subgid"))
    }

    /// Whether the owner has subordinate ids: then `setgroups` may stay allowed (the groups are theirs).
    pub fn has_sub(&self) -> bool {
        self.uids.len() > 1 && self.gids.len() > 1
    }

    /// Whether `uid`:`gid` inside is mapped.
    pub fn maps(&self, uid: u32, gid: u32) -> bool {
        let inside = |v: &[Range], id: u32| v.iter().any(|r| id >= r.inside && id - r.inside < r.count);
        inside(&self.uids, uid) && inside(&self.gids, gid)
    }

    /// The text for `/proc/PID/uid_map` or `gid_map`.
    pub fn text(ranges: &[Range]) -> String {
        ranges.iter().map(|r| format!("{} {} {}\n", r.inside, r.outside, r.count)).collect()
    }
}

/// The name of `uid` in the text of /etc/passwd.
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        f.next()?;
        (f.next()?.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

/// The first range of `/etc/subuid`-style text (`name-or-id:start:count`) for `id` or `name`; lines that do not
/// parse, ranges of 0 and ranges that would wrap are skipped.
pub fn sub_range(text: &str, id: u32, name: Option<&str>) -> Option<(u32, u32)> {
    let id = id.to_string();
    text.lines().take(100_000).find_map(|l| {
        let mut f = l.trim().split(':');
        let who = f.next()?;
        if who != id && Some(who) != name {
            return None;
        }
        let start = f.next()?.parse::<u32>().ok()?;
        let count = f.next()?.parse::<u32>().ok()?;
        (count > 0 && start.checked_add(count).is_some() && f.next().is_none()).then_some((start, count))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";

    #[test]
    fn subordinate_ids_extend_the_owner_mapping() {
        let name = user_name(PASSWD, 1000);
        assert_eq!(name.as_deref(), Some("alice"));
        let m = Maps::new(1000, 1000, name.as_deref(), "bob:100000:65536\nalice:165536:65536\n", "1000:300000:70000\n");
        assert_eq!(Maps::text(&m.uids), "0 1000 1\n1 165536 65536\n");
        assert_eq!(Maps::text(&m.gids), "0 1000 1\n1 300000 65536\n", "capped at MAX_SUB");
        assert!(m.has_sub());
        assert!(m.maps(0, 0) && m.maps(65534, 65534) && m.maps(65536, 1));
        assert!(!m.maps(65537, 0));
    }

    #[test]
    fn without_subordinate_ids_only_the_owner_is_mapped() {
        let m = Maps::new(65534, 65534, None, "alice:165536:65536\n", "");
        assert_eq!(Maps::text(&m.uids), "0 65534 1\n");
        assert!(!m.has_sub());
        assert!(m.maps(0, 0) && !m.maps(1, 0));
    }

    #[test]
    fn bad_lines_are_skipped() {
        for text in ["alice:x:5\n", "alice:10:0\n", "alice:4294967295:2\n", "alice:1:2:3\n", "alice\n"] {
            assert_eq!(sub_range(text, 1000, Some("alice")), None, "{text:?}");
        }
        assert_eq!(sub_range("junk\n1000:5:6\n", 1000, None), Some((5, 6)));
    }
}

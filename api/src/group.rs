//! Unix groups by name and number, for who may use the API: the node resolves its API group (`metac` by default)
//! at start, and a client refused at the socket names the group it would need.

use std::ffi::{CStr, CString};
use std::io;

/// The gid of group `name`, or `None` if there is no such group.
pub fn gid_of(name: &str) -> io::Result<Option<u32>> {
    let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a group name has no NUL"))?;
    // SAFETY: getgrnam_r reads the NUL-terminated name and writes only into the group struct, the buffer of the
    // given length and the result pointer, all of which `lookup` owns for the call.
    Ok(lookup(|g, buf, len, out| unsafe { libc::getgrnam_r(c.as_ptr(), g, buf, len, out) })?.map(|(gid, _)| gid))
}

/// The name of group `gid`, or `None` if it has none.
pub fn name_of(gid: u32) -> Option<String> {
    // SAFETY: as in `gid_of`, getgrgid_r writes only into what `lookup` owns for the call.
    lookup(|g, buf, len, out| unsafe { libc::getgrgid_r(gid, g, buf, len, out) }).ok().flatten().map(|(_, n)| n)
}

/// The name of group `gid` if it has one, else the number: for messages.
pub fn display(gid: u32) -> String {
    name_of(gid).unwrap_or_else(|| gid.to_string())
}

/// Runs a reentrant group lookup with a buffer that grows while it is too small.
fn lookup(
    f: impl Fn(*mut libc::group, *mut libc::c_char, usize, *mut *mut libc::group) -> libc::c_int,
) -> io::Result<Option<(u32, String)>> {
    let mut buf = vec![0 as libc::c_char; 1024];
    loop {
        // SAFETY: an all-zero `group` (null pointers, zero ids) is a valid value for the lookup to overwrite.
        let mut g: libc::group = unsafe { std::mem::zeroed() };
        let mut out = std::ptr::null_mut();
        match f(&mut g, buf.as_mut_ptr(), buf.len(), &mut out) {
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            0 if out.is_null() => return Ok(None),
            0 => {
                // SAFETY: on success gr_name points at a NUL-terminated string inside `buf`, alive here.
                let name = unsafe { CStr::from_ptr(g.gr_name) }.to_string_lossy().into_owned();
                return Ok(Some((g.gr_gid, name)));
            }
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_both_ways() {
        assert_eq!(gid_of("root").unwrap(), Some(0));
        assert_eq!(name_of(0).as_deref(), Some("root"));
        assert_eq!(gid_of("no-such-group-metac").unwrap(), None);
        assert_eq!(display(4_000_000_000), "4000000000");
    }
}

//! What users type that several kinds take the same way: sizes (`512M`, `2G`) and names (a container's, a saved
//! ref's), each checked with one rule and one message.

/// Parses a size: bytes, or a number with a unit `k`, `m`, `g` or `t` (powers of 1024, any case, an optional `b`
/// or `ib`), as `--memory 512M`, `--memory 1.5g` and `--cache-size 2G` take it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("ib").or_else(|| t.strip_suffix('b')).unwrap_or(&t);
    let (num, shift) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 10),
        Some('m') => (&t[..t.len() - 1], 20),
        Some('g') => (&t[..t.len() - 1], 30),
        Some('t') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: f64 = num.parse().map_err(|_| format!("bad size {s:?}: use a number with k, m, g or t, e.g. 512M"))?;
    let v = n * (1u64 << shift) as f64;
    if !(v.is_finite() && v >= 0.0 && v < u64::MAX as f64) {
        return Err(format!("bad size {s:?}: out of range"));
    }
    Ok(v as u64)
}

/// Checks a name users give things (`what`: "container name", "name"): 1-64 letters, digits, `_`, `.` and `-`,
/// starting with a letter or digit (docker's rule), so that it is never mistaken for a path, an option or a key.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("bad {what} {name:?}: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2kb"), Ok(2048));
        assert!(parse_size("lots").unwrap_err().contains("bad size \"lots\""));
        assert!(parse_size("-1m").is_err());
        check_name("name", "b-2.x_y").unwrap();
        assert!(check_name("name", "-b").unwrap_err().contains("bad name \"-b\""));
        assert!(check_name("name", "../x").is_err());
        assert!(check_name("name", &"x".repeat(65)).is_err());
        assert!(check_name("name", "").is_err());
    }
}

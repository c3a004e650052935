//! The line grammar of `grammars/spy.py`, on bytes (a log is Latin-1: one byte, one character).
//!
//! Every function here takes one line's content without its newline and says whether it is a
//! whole token of the grammar (`HEADER`, `TS`, `RETURNED`, ...), with its fields as slices of
//! the line. The grammar's `\s` is ASCII whitespace: space, tab, `\n`, `\r`, form feed, `\v`.

/// `\s` of Python's `re.ASCII` (and the classes `grammars.body` spells out for Rust).
#[inline]
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b)
}

#[inline]
fn digits(s: &[u8]) -> usize {
    s.iter().take_while(|b| b.is_ascii_digit()).count()
}

#[inline]
fn lower_hex(s: &[u8]) -> usize {
    s.iter()
        .take_while(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .count()
}

/// `needle` occurs in `hay` (a line: a search for its first byte, rare here, then a compare;
/// cheaper than building a `memmem` searcher per line).
#[inline]
pub fn has(hay: &[u8], needle: &[u8]) -> bool {
    match needle.first() {
        None => true,
        Some(&first) => memchr::memchr_iter(first, hay).any(|i| hay[i..].starts_with(needle)),
    }
}

/// The line without the blanks a copy may leave at its end (`spy.WS = [ \t\r]*`).
#[inline]
pub fn rstrip(line: &[u8]) -> &[u8] {
    let n = line
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t' | b'\r'))
        .map_or(0, |i| i + 1);
    &line[..n]
}

/// `blank = WS`: nothing but blanks.
#[inline]
pub fn blank(line: &[u8]) -> bool {
    rstrip(line).is_empty()
}

/// `HEADER WS = (\d+): (\S+)`, the whole line: `(seq digits, func)`.
pub fn header(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let line = rstrip(line);
    let n = digits(line);
    if n == 0 || !line[n..].starts_with(b": ") {
        return None;
    }
    let func = &line[n + 2..];
    if func.is_empty() || func.iter().any(|&b| is_space(b)) {
        return None;
    }
    Some((&line[..n], func))
}

/// A stamp: `(pid, tid, "YYYY-MM-DD HH:MM:SS.mmm")`.
pub struct Stamp<'a> {
    pub pid: Option<&'a [u8]>,
    pub tid: Option<&'a [u8]>,
    pub stamp: &'a [u8],
}

fn date_time(s: &[u8]) -> bool {
    // \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}
    const SHAPE: &[u8; 23] = b"dddd-dd-dd dd:dd:dd.ddd";
    s.len() == 23
        && s.iter().zip(SHAPE.iter()).all(|(&c, &k)| {
            if k == b'd' {
                c.is_ascii_digit()
            } else {
                c == k
            }
        })
}

/// `TS WS = (?:P:(\d+); T:(?:0x)?(\d+) )?(date time)`, the whole line.
pub fn stamp(line: &[u8]) -> Option<Stamp<'_>> {
    let line = rstrip(line);
    if line.starts_with(b"P:") {
        let rest = &line[2..];
        let n = digits(rest);
        if n > 0 && rest[n..].starts_with(b"; T:") {
            let pid = &rest[..n];
            let mut t = &rest[n + 4..];
            if t.starts_with(b"0x") && digits(&t[2..]) > 0 {
                t = &t[2..];
            }
            let m = digits(t);
            if m > 0 && t.get(m) == Some(&b' ') && date_time(&t[m + 1..]) {
                return Some(Stamp {
                    pid: Some(pid),
                    tid: Some(&t[..m]),
                    stamp: &t[m + 1..],
                });
            }
        }
        return None;
    }
    if date_time(line) {
        Some(Stamp {
            pid: None,
            tid: None,
            stamp: line,
        })
    } else {
        None
    }
}

fn spaces(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| b == b' ').count()
}

/// `RETURNED WS = Returned: +(-?\d+) +(\S+)`, the whole line: `(rv with its sign, rv_name)`
/// (the spy writes two spaces and one; a web page's copy collapses them).
pub fn returned(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = rstrip(line).strip_prefix(b"Returned:")?;
    let gap = spaces(rest);
    if gap == 0 {
        return None;
    }
    let rest = &rest[gap..];
    let sign = usize::from(rest.first() == Some(&b'-'));
    let n = digits(&rest[sign..]);
    let gap = spaces(&rest[sign + n..]);
    if n == 0 || gap == 0 {
        return None;
    }
    let name = &rest[sign + n + gap..];
    if name.is_empty() || name.iter().any(|&b| is_space(b)) {
        return None;
    }
    Some((&rest[..sign + n], name))
}

pub const BANNER: &[u8] = b"*************** OpenSC PKCS#11 spy *****************";

/// `load-result = Loaded: ".*" WS | Error: .*`
pub fn load_result(line: &[u8]) -> bool {
    let l = rstrip(line);
    (l.starts_with(b"Loaded: \"") && l.len() >= 10 && l.ends_with(b"\""))
        || line.starts_with(b"Error: ")
}

/// `[ \t][ \t\r]*[^ \t\r\nR]`: indented, and not blank (nor a `Returned:` pushed right).
fn indented_start(line: &[u8]) -> bool {
    matches!(line.first(), Some(b' ' | b'\t'))
        && line[1..]
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t' | b'\r'))
            .is_some_and(|&b| b != b'R' && b != b'\n')
}

/// `body-start` (`spy.BODY_STARTS`): the line starts like one of the body units.
pub fn body_start(line: &[u8]) -> bool {
    let Some(&first) = line.first() else {
        return false;
    };
    match first {
        b' ' | b'\t' => indented_start(line),
        b'}' => true,
        b'[' => {
            line.starts_with(b"[in] ") || line.starts_with(b"[out] ") || rstrip(line) == b"[compat]"
        }
        b'C' => {
            line.starts_with(b"CKM_")
                || (line.starts_with(b"Count is ") && line.get(9).is_some_and(u8::is_ascii_digit))
        }
        b'U' => line.starts_with(b"Unknown Mechanism ("),
        b'S' => {
            line.starts_with(b"Slot ") && {
                let r = &line[5..];
                let r = r.strip_prefix(b"-").unwrap_or(r);
                r.first().is_some_and(u8::is_ascii_digit)
            }
        }
        b'O' => line.starts_with(b"Object 0x") && lower_hex(&line[9..]) > 0,
        b'I' => line.starts_with(b"Interface '"),
        b'(' => line.starts_with(b"(unknown type"),
        b'p' => line.starts_with(b"pMechanism->") || line.starts_with(b"pApplication="),
        b'N' => line.starts_with(b"Notify=") || line.starts_with(b"NULL [size : 0x"),
        b'P' => line.starts_with(b"Parameters block for "),
        _ => orphan_rendering(line),
    }
}

/// `[0-9a-f]{8}(?:[0-9a-f]{8})? / -?\d`: a buffer rendering another thread cut from its line.
fn orphan_rendering(line: &[u8]) -> bool {
    let n = lower_hex(line);
    if n != 8 && n != 16 {
        return false;
    }
    let Some(r) = line[n..].strip_prefix(b" / ") else {
        return false;
    };
    let r = r.strip_prefix(b"-").unwrap_or(r);
    r.first().is_some_and(u8::is_ascii_digit)
}

/// The line ends in `:\d\d\.\d{3}` (a timestamp unit glued to it, or its own stamp).
pub fn ends_with_stamp(line: &[u8]) -> bool {
    let n = line.len();
    n >= 7 && {
        let t = &line[n - 7..];
        t[0] == b':'
            && t[1].is_ascii_digit()
            && t[2].is_ascii_digit()
            && t[3] == b'.'
            && t[4..].iter().all(u8::is_ascii_digit)
    }
}

/// A body line of a clean record (`BODY_LINE`): a body start, no `Returned:`, and no stamp
/// where its padding starts (`returned`: whether the line holds a `Returned:`).
pub fn strict_body(line: &[u8], returned: impl FnOnce() -> bool) -> bool {
    body_start(line) && !ends_with_stamp(rstrip(line)) && !returned()
}

/// Where `Returned:` stands in a text, found in one pass (a line holds one if one starts in
/// it and ends before its newline).
pub struct Marks(Vec<usize>);

static RETURNED_FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"Returned:"));

impl Marks {
    pub fn of(text: &[u8]) -> Marks {
        Marks(RETURNED_FINDER.find_iter(text).collect())
    }

    /// A `Returned:` lies wholly within `text[start..end]`.
    pub fn within(&self, start: usize, end: usize) -> bool {
        let i = self.0.partition_point(|&m| m < start);
        self.0.get(i).is_some_and(|&m| m + 9 <= end)
    }
}

/// `NULL \[size : 0x[0-9A-F]+ \(-?\d+\)\]` at the start of the line.
fn null_rendering(line: &[u8]) -> bool {
    let Some(r) = line.strip_prefix(b"NULL [size : 0x") else {
        return false;
    };
    let x = r
        .iter()
        .take_while(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
        .count();
    let Some(r) = r[x..].strip_prefix(b" (").filter(|_| x > 0) else {
        return false;
    };
    let r = r.strip_prefix(b"-").unwrap_or(r);
    let d = digits(r);
    d > 0 && r[d..].starts_with(b")]")
}

/// The body kinds of `LINE_KINDS` that are more than an indented line (so that one no record
/// takes is a lost call's, not prose): a unit that starts like one of them.
fn body_kind(unit: &[u8]) -> Option<Kind> {
    let first = *unit.first()?;
    let spy = match first {
        b' ' | b'\t' => {
            let hexdump = unit.len() >= 14
                && unit.starts_with(b"    ")
                && unit[4..12]
                    .iter()
                    .all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
                && &unit[12..14] == b"  ";
            let entry = unit.strip_prefix(b"    CKA_").is_some_and(|r| {
                r.first()
                    .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
                    || r.strip_prefix(b"? (0x")
                        .is_some_and(|h| lower_hex(h) >= 8 && h.get(8) == Some(&b')'))
            });
            return Some(if hexdump || entry {
                Kind::Body
            } else {
                Kind::Indented
            });
        }
        b'[' => {
            unit.starts_with(b"[in] ") || unit.starts_with(b"[out] ") || rstrip(unit) == b"[compat]"
        }
        b'C' => {
            unit.starts_with(b"CKM_")
                || (unit.starts_with(b"Count is ") && unit.get(9).is_some_and(u8::is_ascii_digit))
        }
        b'U' => unit.starts_with(b"Unknown Mechanism ("),
        b'S' => {
            unit.starts_with(b"Slot ") && {
                let r = &unit[5..];
                r.strip_prefix(b"-")
                    .unwrap_or(r)
                    .first()
                    .is_some_and(u8::is_ascii_digit)
            }
        }
        b'O' => unit.starts_with(b"Object 0x") && lower_hex(&unit[9..]) > 0,
        b'I' => unit.starts_with(b"Interface '"),
        b'(' => unit.starts_with(b"(unknown type"),
        b'p' => unit.starts_with(b"pMechanism->") || unit.starts_with(b"pApplication="),
        b'N' => unit.starts_with(b"Notify=") || null_rendering(unit),
        b'P' => unit.starts_with(b"Parameters block for "),
        b'}' => true,
        _ => orphan_rendering(unit),
    };
    spy.then_some(Kind::Body)
}

/// What the line grammar (`spy.classify`) makes of one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Blank,
    Banner,
    LoadResult,
    Header,
    Timestamp,
    Returned,
    Body,
    /// An indented line that is no dump row nor template entry: the spy's inside a record,
    /// prose alone.
    Indented,
    Foreign,
}

/// `spy.classify`: the first of `LINE_KINDS` that matches the whole unit.
pub fn classify(unit: &[u8]) -> Kind {
    if blank(unit) {
        Kind::Blank
    } else if rstrip(unit) == BANNER {
        Kind::Banner
    } else if load_result(unit) {
        Kind::LoadResult
    } else if header(unit).is_some() {
        Kind::Header
    } else if stamp(unit).is_some() {
        Kind::Timestamp
    } else if returned(unit).is_some() {
        Kind::Returned
    } else {
        body_kind(unit).unwrap_or(Kind::Foreign)
    }
}

/// `spy.split_units`: a `Returned:` or timestamp unit glued to the end of another unit is cut
/// off into a unit of its own; returns where the second unit starts, if there is one.
pub fn split_at(line: &[u8]) -> Option<usize> {
    let n = line.len();
    let t = rstrip(line);
    let maybe = has(line, b"Returned: ") || (t.len() >= 4 && t[t.len() - 4] == b'.');
    if !maybe || returned(line).is_some() || stamp(line).is_some() {
        return None;
    }
    (1..n).find(|&i| match line[i] {
        b'R' => returned(&line[i..]).is_some(),
        b'P' | b'0'..=b'9' => stamp(&line[i..]).is_some(),
        _ => false,
    })
}

/// A number too large for its column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutOfRange;

/// A decimal number: `Ok` if it fits `u64`, `Err(OutOfRange)` if it is too large.
pub fn decimal(s: &[u8]) -> Result<u64, OutOfRange> {
    let mut v: u64 = 0;
    for &b in s {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(OutOfRange)?;
    }
    Ok(v)
}

/// Hexadecimal digits (`[0-9a-fA-F]`): `Ok` if the value fits `u64`.
pub fn hex(s: &[u8]) -> Result<u64, OutOfRange> {
    let mut v: u64 = 0;
    for &b in s {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(OutOfRange),
        };
        if v >> 60 != 0 {
            return Err(OutOfRange);
        }
        v = (v << 4) | u64::from(d);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert_eq!(header(b"12: C_Login"), Some((&b"12"[..], &b"C_Login"[..])));
        assert!(header(b"12: C_Login x").is_none());
        assert!(header(b": C_X").is_none());
        let s = stamp(b"P:12; T:0x34 2024-01-02 03:04:05.678").unwrap();
        assert_eq!((s.pid, s.tid), (Some(&b"12"[..]), Some(&b"34"[..])));
        assert!(stamp(b"P:12; T:0x 2024-01-02 03:04:05.678").is_none());
        assert!(stamp(b"2024-01-02 03:04:05.678").is_some());
        assert!(stamp(b"2024-01-02 03:04:05.67").is_none());
        assert_eq!(
            returned(b"Returned:  -5 CKR_OK"),
            Some((&b"-5"[..], &b"CKR_OK"[..]))
        );
        assert!(returned(b"Returned:  5 CKR_OK \t\r").is_some());
        assert_eq!(
            returned(b"Returned: 5 CKR_OK"),
            Some((&b"5"[..], &b"CKR_OK"[..]))
        );
        assert!(
            returned(b"Returned:5 CKR_OK").is_none() && returned(b"Returned: 5 CKR_OK x").is_none()
        );
        assert!(body_start(b"[compat]") && body_start(b"[compat] ") && !body_start(b"[compat]x"));
        assert!(body_start(b"  x") && !body_start(b"   ") && !body_start(b"  Returned:"));
        assert_eq!(classify(b"  plain prose"), Kind::Indented);
        assert_eq!(classify(b"    00000000  30 31"), Kind::Body);
        assert_eq!(classify(b" \t "), Kind::Blank);
        assert!(body_start(b"0123abcd / 5") && !body_start(b"0123abcd0 / 5"));
        assert!(body_start(b"Slot -1 x") && !body_start(b"Slot x"));
        assert!(
            ends_with_stamp(b"x:12.345")
                && ends_with_stamp(b":12.345")
                && !ends_with_stamp(b"12.345")
        );
        assert_eq!(split_at(b"[in] x = 1Returned:  0 CKR_OK"), Some(10));
        assert_eq!(split_at(b"Returned:  0 CKR_OK"), None);
        let glued = b"P:8853; T:0x139708942257024 2026-11-28 15:13:15.9Returned: 0 CKR_OK67";
        assert_eq!(split_at(glued), Some(49));
        assert_eq!(split_at(b"[in] x2024-01-02 03:04:05.678 \t"), Some(6));
        assert_eq!(classify(b"Loaded: \""), Kind::Foreign);
        assert_eq!(decimal(b"18446744073709551615"), Ok(u64::MAX));
        assert!(decimal(b"18446744073709551616").is_err());
        assert!(hex(b"10000000000000000").is_err());
    }
}

//! A record body's fields: `grammars/body.py`, line by line instead of a regex per field.
//!
//! The body is the text between a record's timestamp and its `Returned:` line, starting and
//! ending with a newline. Every pattern of `grammars/body.py` starts at a newline, so each is
//! tried on every line (the first or last match, or all, as that module takes them); the few
//! that reach into the next line (a template's entries, a secret entry's dump row) read on.

use crate::enums::{MECHANISMS, USER_TYPES};
use crate::lines::{is_space, OutOfRange};
use memchr::memmem;

/// The fields one body gives (`grammars.body.FIELDS`); numbers too large for `u64` are
/// `Err(OutOfRange)` (null in the table, and an `out-of-range:<column>` flag).
#[derive(Debug, Default, PartialEq)]
pub struct Fields {
    pub slot: Option<Result<u64, OutOfRange>>,
    pub session: Option<Result<u64, OutOfRange>>,
    pub object: Option<Result<u64, OutOfRange>>,
    pub mechanism: Option<Vec<u8>>,
    pub user_type: Option<Vec<u8>>,
    /// Sum of the buffers' lengths (wrapping, as Polars sums `UInt64`), and whether a length
    /// fit no `u64` (it is left out of the sum).
    pub in_len: Option<(u64, bool)>,
    pub out_len: Option<(u64, bool)>,
    pub attributes: Vec<Vec<u8>>,
    pub created: Vec<Result<u64, OutOfRange>>,
    pub secrets: Vec<Vec<u8>>,
    pub flags: Vec<Vec<u8>>,
}

fn lower_hex_len(s: &[u8]) -> usize {
    s.iter()
        .take_while(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .count()
}

/// `PREFIX 0x([0-9a-f]+)` at the start of `line`: the hex digits.
fn hex_after<'a>(line: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(prefix)?.strip_prefix(b"0x")?;
    let n = lower_hex_len(rest);
    (n > 0).then(|| &rest[..n])
}

const IN_OBJECT: &[&[u8]] = &[
    b"hKey",
    b"hObject",
    b"hBaseKey",
    b"hWrappingKey",
    b"hUnwrappingKey",
    b"hPublicKey",
    b"hPrivateKey",
    b"*phSession",
    b"*phObject",
    b"*phNewObject",
    b"phKey",
];
const CREATED_OUT: &[&[u8]] = &[
    b"*phObject",
    b"*phNewObject",
    b"hKey",
    b"hPublicKey",
    b"hPrivateKey",
    b"phKey",
];

/// `[dir] NAME = 0x…` with NAME one of `names`: the hex digits.
fn handle<'a>(line: &'a [u8], dir: &[u8], names: &[&[u8]]) -> Option<&'a [u8]> {
    let rest = line.strip_prefix(dir)?;
    names
        .iter()
        .find_map(|name| hex_after(rest.strip_prefix(*name)?, b" = "))
}

fn non_space_run(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| !is_space(b)).count()
}

/// `MECHANISM = \n(?:\[in\] )?pMechanism->type ?= ?(\S+)`
fn mechanism(line: &[u8]) -> Option<&[u8]> {
    let l = line.strip_prefix(b"[in] ").unwrap_or(line);
    let l = l.strip_prefix(b"pMechanism->type")?;
    let l = l.strip_prefix(b" ").unwrap_or(l);
    let l = l.strip_prefix(b"=")?;
    // ` ?(\S+)`: the space is optional, but \S+ cannot start at a space
    let l = l.strip_prefix(b" ").unwrap_or(l);
    let n = non_space_run(l);
    (n > 0).then(|| &l[..n])
}

/// `MECHANISM_INFO` on one line (`rest_is_end`: the line is the text's last, no newline after).
fn mechanism_info(line: &[u8]) -> Option<&[u8]> {
    let after = if let Some(r) = line.strip_prefix(b"[in] type =") {
        r
    } else {
        line
    };
    let spaces = after.iter().take_while(|&&b| b == b' ').count();
    if spaces == 0 {
        return None;
    }
    let v = &after[spaces..];
    // first alternative: Unknown Mechanism \([0-9a-f]+\) followed by a terminator
    if let Some(r) = v.strip_prefix(b"Unknown Mechanism (") {
        let n = lower_hex_len(r);
        if n > 0 && r.get(n) == Some(&b')') {
            let end = 19 + n + 1;
            if terminator(&v[end..]) {
                return Some(&v[..end]);
            }
        }
    }
    // second: the shortest run of [^\s\[] followed by a terminator
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        if is_space(b) || b == b'[' {
            break;
        }
        i += 1;
        if terminator(&v[i..]) {
            return Some(&v[..i]);
        }
    }
    None
}

/// `(?:[ \t\n\r\f\x0B]|\[|Returned:|$)` at the start of `rest` (a line's rest: its newline
/// follows, which is whitespace, so an empty rest is a terminator).
fn terminator(rest: &[u8]) -> bool {
    match rest.first() {
        None => true,
        Some(&b) => is_space(b) || b == b'[' || rest.starts_with(b"Returned:"),
    }
}

enum Size<'a> {
    Length(&'a [u8]),
    Empty,
}

struct Buffer<'a> {
    incoming: bool,
    name: &'a [u8],
    size: Size<'a>,
    /// The address form with a length above 0 (`_SECRET_BUFFER`'s ` / 0*[1-9][0-9]*$`).
    positive: bool,
}

fn signed_digits(s: &[u8]) -> usize {
    let sign = usize::from(s.first() == Some(&b'-'));
    let n = s[sign..].iter().take_while(|b| b.is_ascii_digit()).count();
    if n == 0 {
        0
    } else {
        sign + n
    }
}

/// `BUFFER` at the start of a line.
fn buffer(line: &[u8]) -> Option<Buffer<'_>> {
    let (incoming, rest) = if let Some(r) = line.strip_prefix(b"[in] ") {
        (true, r)
    } else {
        (false, line.strip_prefix(b"[out] ")?)
    };
    match rest.first() {
        Some(b) if b.is_ascii_alphabetic() || *b == b'*' => {}
        _ => return None,
    }
    let n = rest
        .iter()
        .take_while(|&&b| !is_space(b) && b != b'[')
        .count();
    let name = &rest[..n];
    let mut r = &rest[n..];
    if r.first() == Some(&b'[') {
        let close = r.iter().position(|&b| b == b']' || b == b'\n')?;
        if r[close] != b']' {
            return None;
        }
        r = &r[close + 1..];
    }
    let found = r
        .strip_prefix(b" =")
        .and_then(buffer_form)
        .or_else(|| buffer_form(r))?;
    Some(Buffer {
        incoming,
        name,
        size: found.0,
        positive: found.1,
    })
}

/// The rest of `BUFFER` after the name: ` address / length`, ` NULL [size : 0x… (length)]`
/// or ` EMPTY`; the length, and whether it is an address form's length above 0.
fn buffer_form(r: &[u8]) -> Option<(Size<'_>, bool)> {
    let r = r.strip_prefix(b" ")?;
    let h = lower_hex_len(r);
    if h >= 8 {
        for width in [16, 8] {
            if h >= width {
                if let Some(len) = r[width..].strip_prefix(b" / ") {
                    let d = signed_digits(len);
                    if d > 0 {
                        let digits = &len[..d];
                        let positive = digits[0] != b'-' && digits.iter().any(|&b| b != b'0');
                        return Some((Size::Length(digits), positive));
                    }
                }
            }
        }
    }
    if let Some(n) = r.strip_prefix(b"NULL [size : 0x") {
        let x = n
            .iter()
            .take_while(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
            .count();
        if x > 0 {
            if let Some(p) = n[x..].strip_prefix(b" (") {
                let d = signed_digits(p);
                if d > 0 && p[d..].starts_with(b")]") {
                    return Some((Size::Length(&p[..d]), false));
                }
            }
        }
    }
    r.starts_with(b"EMPTY").then_some((Size::Empty, false))
}

/// A template head line, `\[(in|out)\] [A-Za-z0-9_]+\[[0-9]+\]: ?`, the whole line: its
/// direction and name.
fn template_head(line: &[u8]) -> Option<(bool, &[u8])> {
    let (incoming, rest) = if let Some(r) = line.strip_prefix(b"[in] ") {
        (true, r)
    } else {
        (false, line.strip_prefix(b"[out] ")?)
    };
    let n = rest
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
        .count();
    if n == 0 {
        return None;
    }
    let r = rest[n..].strip_prefix(b"[")?;
    let d = r.iter().take_while(|b| b.is_ascii_digit()).count();
    if d == 0 {
        return None;
    }
    let r = r[d..].strip_prefix(b"]:")?;
    crate::lines::blank(r).then_some((incoming, &rest[..n]))
}

fn attr_name_len(s: &[u8]) -> usize {
    s.iter()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_')
        .count()
}

/// `ENTRY = ^    (CKA_[A-Z0-9_]+(?:\((?:NSS|Netsc)\))?|CKA_\? \(0x[0-9a-f]{8}\))`
fn entry(line: &[u8]) -> Option<&[u8]> {
    let e = line.strip_prefix(b"    ")?;
    let r = e.strip_prefix(b"CKA_")?;
    let n = attr_name_len(r);
    if n > 0 {
        let mut end = 4 + n;
        for tag in [&b"(NSS)"[..], b"(Netsc)"] {
            if e[end..].starts_with(tag) {
                end += tag.len();
                break;
            }
        }
        return Some(&e[..end]);
    }
    let h = r.strip_prefix(b"? (0x")?;
    (lower_hex_len(h) >= 8 && h.get(8) == Some(&b')')).then(|| &e[..4 + 5 + 8 + 1])
}

const SECRET_NAMES: &[&[u8]] = &[
    b"CKA_VALUE",
    b"CKA_PRIVATE_EXPONENT",
    b"CKA_PRIME_1",
    b"CKA_PRIME_2",
    b"CKA_EXPONENT_1",
    b"CKA_EXPONENT_2",
    b"CKA_COEFFICIENT",
    b"CKA_SEED",
];

/// `SECRET_ENTRY`: this line `    NAME +[0-9a-f]{8,16} / [1-9][0-9]*` and the next starts
/// `    00000000  `; the secret attribute's name.
fn secret_entry<'a>(line: &'a [u8], next: Option<&[u8]>) -> Option<&'a [u8]> {
    let e = line.strip_prefix(b"    ")?;
    let name = SECRET_NAMES.iter().find(|n| e.starts_with(n))?;
    let r = &e[name.len()..];
    let s = r.iter().take_while(|&&b| b == b' ').count();
    if s == 0 {
        return None;
    }
    let r = &r[s..];
    let h = lower_hex_len(r);
    if !(8..=16).contains(&h) {
        return None;
    }
    let len = crate::lines::rstrip(r[h..].strip_prefix(b" / ")?);
    if !matches!(len.first(), Some(b'1'..=b'9')) || !len.iter().all(u8::is_ascii_digit) {
        return None;
    }
    next?.starts_with(b"    00000000  ").then_some(*name)
}

const ALWAYS_SECRET: &[(&[u8], &[u8])] = &[
    (b"pPin", b"pin"),
    (b"pOldPin", b"pin"),
    (b"pNewPin", b"pin"),
    (b"pWrappedKey", b"wrapped-key"),
    (b"RandomData", b"random"),
    (b"pSeed", b"seed"),
    (b"pOperationState", b"op-state"),
];
const DATA_NAMES: &[&[u8]] = &[
    b"pData",
    b"pPart",
    b"pLastPart",
    b"pPlaintext",
    b"pPlaintextPart",
];
const ENCRYPT_FUNCS: &[&[u8]] = &[
    b"C_Encrypt",
    b"C_EncryptUpdate",
    b"C_DigestEncryptUpdate",
    b"C_SignEncryptUpdate",
    b"C_EncryptMessage",
    b"C_EncryptMessageNext",
];
const DECRYPT_FUNCS: &[&[u8]] = &[
    b"C_Decrypt",
    b"C_DecryptUpdate",
    b"C_DecryptFinal",
    b"C_DecryptDigestUpdate",
    b"C_DecryptVerifyUpdate",
    b"C_DecryptMessage",
    b"C_DecryptMessageNext",
    b"C_VerifyRecover",
];
const CKF_RW_SESSION: u64 = 0x2;
const VALUE_FUNCS: &[&[u8]] = &[
    b"C_GenerateKey",
    b"C_GenerateKeyPair",
    b"C_CreateObject",
    b"C_CopyObject",
    b"C_UnwrapKey",
    b"C_DeriveKey",
];

fn secret_kind(name: &[u8], incoming: bool, func: &[u8]) -> Option<&'static [u8]> {
    if let Some((_, kind)) = ALWAYS_SECRET.iter().find(|(n, _)| *n == name) {
        return Some(kind);
    }
    if !DATA_NAMES.contains(&name) {
        return None;
    }
    if (incoming && ENCRYPT_FUNCS.contains(&func)) || (!incoming && DECRYPT_FUNCS.contains(&func)) {
        return Some(b"plaintext");
    }
    let signish = [&b"C_Sign"[..], b"C_Verify", b"C_Digest"]
        .iter()
        .any(|p| func.starts_with(p));
    (incoming && signish).then_some(b"data")
}

/// One `_VALUE_ENTRY` at a line of an `[in]` section: `(attribute, value)`.
fn value_entry(line: &[u8], next: Option<&[u8]>) -> Option<(Vec<u8>, Vec<u8>)> {
    let e = line.strip_prefix(b"    ")?;
    let r = e.strip_prefix(b"CKA_")?;
    let n = attr_name_len(r);
    if n == 0 {
        return None;
    }
    let name = &e[..4 + n];
    let after = &r[n..];
    let s = after.iter().take_while(|&&b| b == b' ').count();
    if s == 0 {
        return None;
    }
    let v = &after[s..];
    for word in [&b"True"[..], b"False"] {
        if v.starts_with(word) {
            return Some((name.to_vec(), word.to_vec()));
        }
    }
    if name == b"CKA_CLASS" || name == b"CKA_KEY_TYPE" {
        if v.starts_with(b"CKO_") || v.starts_with(b"CKK_") {
            let m = v[4..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
            if m > 0 {
                return Some((name.to_vec(), v[..4 + m].to_vec()));
            }
        }
        return None;
    }
    if name != b"CKA_MODULUS_BITS" && name != b"CKA_VALUE_LEN" {
        return None;
    }
    let h = lower_hex_len(v);
    let width = if h == 16 || h == 8 { h } else { return None };
    let len = crate::lines::rstrip(v[width..].strip_prefix(b" / ")?);
    if len.len() != 1 || !matches!(len[0], b'1'..=b'8') {
        return None;
    }
    let row = next?.strip_prefix(b"    00000000  ")?;
    let mut bytes = Vec::new();
    let mut r = row;
    while bytes.len() < 8
        && r.len() >= 3
        && r[0].is_ascii_hexdigit()
        && r[1].is_ascii_hexdigit()
        && r[2] == b' '
    {
        if r[0].is_ascii_lowercase() || r[1].is_ascii_lowercase() {
            break;
        }
        bytes.push(&r[..2]);
        r = &r[3..];
    }
    if bytes.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for b in bytes.iter().rev() {
        let byte = crate::lines::hex(b).unwrap_or(0);
        value = (value << 8) | byte;
    }
    Some((name.to_vec(), value.to_string().into_bytes()))
}

/// python-pkcs11's name of hex `digits`, as `int(digits, 16)` reads them; `None`: no name.
fn enum_name(table: &'static [(u64, &'static str)], digits: &[u8]) -> Option<&'static str> {
    let value = py_hex(digits)?;
    let i = table.binary_search_by_key(&value, |&(v, _)| v).ok()?;
    Some(table[i].1)
}

/// `int(text, 16)` for the digits Python accepts (sign, `0x`, single underscores); only
/// values that fit `u64` can name anything.
fn py_hex(text: &[u8]) -> Option<u64> {
    let t = text;
    let (negative, t) = match t.first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let t = if t.len() > 2 && (t.starts_with(b"0x") || t.starts_with(b"0X")) {
        let r = &t[2..];
        r.strip_prefix(b"_").unwrap_or(r)
    } else {
        t
    };
    if t.is_empty()
        || t.first() == Some(&b'_')
        || t.last() == Some(&b'_')
        || memmem::find(t, b"__").is_some()
    {
        return None;
    }
    let digits: Vec<u8> = t.iter().copied().filter(|&b| b != b'_').collect();
    let value = crate::lines::hex(&digits).ok()?;
    if negative && value != 0 {
        return None;
    }
    Some(value)
}

/// `records.mechanism_name`.
pub fn mechanism_name(text: &[u8]) -> Vec<u8> {
    if let Some(d) = text.strip_prefix(b"0x") {
        return enum_name(MECHANISMS, d).map_or_else(|| text.to_vec(), |n| n.as_bytes().to_vec());
    }
    if let Some(inner) = text.strip_prefix(b"Unknown Mechanism (") {
        let d = &inner[..inner.len().saturating_sub(1)];
        return enum_name(MECHANISMS, d).map_or_else(
            || {
                let mut v = b"0x".to_vec();
                v.extend(d.iter().map(u8::to_ascii_uppercase));
                v
            },
            |n| n.as_bytes().to_vec(),
        );
    }
    text.to_vec()
}

/// `records.user_type_name`.
pub fn user_type_name(text: &[u8]) -> Vec<u8> {
    match text.strip_prefix(b"0x") {
        Some(d) => {
            enum_name(USER_TYPES, d).map_or_else(|| text.to_vec(), |n| n.as_bytes().to_vec())
        }
        None => text.to_vec(),
    }
}

struct Template {
    incoming: bool,
    /// Line indexes of its continuation lines (`(?:[^\[\n][^\n]*\n)*`).
    lines: std::ops::Range<usize>,
}

/// Read the fields of one body (`func`: the record's function).
pub fn read(func: &[u8], body: &[u8]) -> Fields {
    let mut f = Fields::default();
    let login = func == b"C_Login" || func == b"C_LoginUser";
    let templated = TEMPLATED.find(body).is_some();
    let mut session_out = None;
    let mut session_in = None;
    let mut mech = None;
    let mut user = None;
    let mut flags_hex = None;
    let mut buffer_secrets = Vec::new();
    for line in body_lines(body) {
        // every field's line starts "[in] ", "[out] " or "pMechanism->": skip the rest (dump rows)
        if !matches!(line.first(), Some(b'[' | b'p')) {
            continue;
        }
        if f.slot.is_none() {
            if let Some(h) = hex_after(line, b"[in] slotID = ") {
                f.slot = Some(crate::lines::hex(h));
            }
        }
        if let Some(h) = hex_after(line, b"[out] *phSession = ") {
            session_out = Some(h);
        }
        if session_in.is_none() {
            session_in = hex_after(line, b"[in] hSession = ");
        }
        if f.object.is_none() {
            if let Some(h) = handle(line, b"[in] ", IN_OBJECT) {
                f.object = Some(crate::lines::hex(h));
            }
        }
        if mech.is_none() {
            mech = mechanism(line);
        }
        if login && user.is_none() {
            if let Some(r) = line.strip_prefix(b"[in] userType = ") {
                let n = non_space_run(r);
                if n > 0 {
                    user = Some(&r[..n]);
                }
            }
        }
        if let Some(h) = handle(line, b"[out] ", CREATED_OUT) {
            f.created.push(crate::lines::hex(h));
        }
        if let Some(b) = buffer(line) {
            if let Size::Length(len) = b.size {
                if !b.name.starts_with(b"pMechanism") {
                    add_size(
                        if b.incoming {
                            &mut f.in_len
                        } else {
                            &mut f.out_len
                        },
                        len,
                    );
                }
            }
            if b.positive {
                if let Some(kind) = secret_kind(b.name, b.incoming, func) {
                    let mut s = kind.to_vec();
                    s.push(b':');
                    s.extend_from_slice(b.name);
                    buffer_secrets.push(s);
                }
            }
        }
        if flags_hex.is_none() && func == b"C_OpenSession" && !templated {
            if let Some(h) = hex_after(line, b"[in] flags = ") {
                if crate::lines::blank(&line[15 + h.len()..]) {
                    flags_hex = Some(h);
                }
            }
        }
    }
    f.session = session_out.or(session_in).map(crate::lines::hex);
    if mech.is_none()
        && func == b"C_GetMechanismInfo"
        && memmem::find(body, b"pMechanism").is_none()
    {
        mech = body_lines(body).find_map(mechanism_info);
    }
    f.mechanism = mech.map(mechanism_name);
    f.user_type = user.map(user_type_name);
    let mut key_secrets = Vec::new();
    if templated {
        let lines: Vec<&[u8]> = body_lines(body).collect();
        let templates = templates(&lines);
        for t in templates.iter().filter(|t| t.incoming) {
            f.attributes.extend(
                lines[t.lines.clone()]
                    .iter()
                    .filter_map(|l| entry(l))
                    .map(<[u8]>::to_vec),
            );
        }
        let any_secret =
            (0..lines.len()).any(|i| secret_entry(lines[i], lines.get(i + 1).copied()).is_some());
        if any_secret {
            for t in &templates {
                let text = &lines[t.lines.start.saturating_sub(1)..t.lines.end];
                if text.iter().any(|l| {
                    memmem::find(l, b"CKO_CERTIFICATE").is_some()
                        || memmem::find(l, b"CKO_PUBLIC_KEY").is_some()
                }) {
                    continue;
                }
                for i in t.lines.clone() {
                    let next = if i + 1 < t.lines.end {
                        Some(lines[i + 1])
                    } else {
                        None
                    };
                    if let Some(name) = secret_entry(lines[i], next) {
                        let mut s = b"key:".to_vec();
                        s.extend_from_slice(name);
                        key_secrets.push(s);
                    }
                }
            }
        }
        if VALUE_FUNCS.contains(&func) {
            f.flags = template_values(&lines);
        }
    } else if let Some(Ok(value)) = flags_hex.map(crate::lines::hex) {
        // flags beyond 64 bits are no CK_FLAGS: no flag then
        let rw = value & CKF_RW_SESSION != 0;
        f.flags = vec![if rw {
            b"CKF_RW_SESSION=True".to_vec()
        } else {
            b"CKF_RW_SESSION=False".to_vec()
        }];
    }
    f.secrets = buffer_secrets;
    f.secrets.extend(key_secrets);
    f
}

/// One more buffer length into a direction's sum (`None`: no buffer yet).
fn add_size(sum: &mut Option<(u64, bool)>, len: &[u8]) {
    let (total, invalid) = sum.get_or_insert((0, false));
    match len.first() {
        Some(b'-') => *invalid = true,
        _ => match crate::lines::decimal(len) {
            Ok(v) => *total = total.wrapping_add(v),
            Err(OutOfRange) => *invalid = true,
        },
    }
}

static TEMPLATED: std::sync::LazyLock<memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memmem::Finder::new(b"emplate["));

/// The lines of a body (it starts and ends with a newline; each line between two of them).
fn body_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let inner = if body.len() >= 2 {
        &body[1..body.len() - 1]
    } else {
        &[][..]
    };
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b'\n', inner);
    let mut done = body.len() < 2;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match ends.next() {
            Some(i) => {
                let line = &inner[start..i];
                start = i + 1;
                Some(line)
            }
            None => {
                done = true;
                Some(&inner[start..])
            }
        }
    })
}

/// The templates (`TEMPLATE`): a head line and the lines up to the next `[` line or empty line.
fn templates(lines: &[&[u8]]) -> Vec<Template> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some((incoming, _)) = template_head(lines[i]) {
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end].first().is_some_and(|&b| b != b'[') {
                end += 1;
            }
            out.push(Template {
                incoming,
                lines: start..end,
            });
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// `_template_values`: audit values of the `[in]` sections of a key-creating call.
fn template_values(lines: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((incoming, name)) = template_head(lines[i]) else {
            i += 1;
            continue;
        };
        // `_SECTION`: the lines up to the next `[` line; empty lines do not end it
        let start = i + 1;
        let mut end = start;
        while end < lines.len() && lines[end].first() != Some(&b'[') {
            end += 1;
        }
        if incoming {
            let mut j = start;
            while j < end {
                let next = if j + 1 < end {
                    Some(lines[j + 1])
                } else {
                    None
                };
                if let Some((attr, value)) = value_entry(lines[j], next) {
                    let mut s = Vec::new();
                    if name != b"pTemplate" {
                        s.extend_from_slice(name);
                        s.push(b'.');
                    }
                    s.extend_from_slice(&attr);
                    s.push(b'=');
                    s.extend_from_slice(&value);
                    out.push(s);
                }
                j += 1;
            }
        }
        // A head with no line after it ends its match with its own newline, which is then
        // not there to start a section on the next line (`_SECTION` starts with a newline).
        i = if end == start { end + 1 } else { end };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_lengths() {
        let body = b"\n[in] hSession = 0x1\n[in] pMechanism->type = CKM_RSA_PKCS\n[in] pData[ulDataLen] 00007f00 / 5\n    00000000  31 32\n[out] pSignature[ulSignatureLen] 00007f10 / 256\n";
        let f = read(b"C_Sign", body);
        assert_eq!(f.session, Some(Ok(1)));
        assert_eq!(f.mechanism.as_deref(), Some(&b"CKM_RSA_PKCS"[..]));
        assert_eq!(f.in_len, Some((5, false)));
        let body =
            b"\n[in] pData[ulDataLen] 00007f00 / 5\n[out] pSignature 0000000000007f10 / 256\n";
        let f = read(b"C_Sign", body);
        assert_eq!(
            (f.in_len, f.out_len),
            (Some((5, false)), Some((256, false)))
        );
        assert_eq!(f.secrets, vec![b"data:pData".to_vec()]);
    }

    #[test]
    fn names() {
        assert_eq!(
            mechanism_name(b"0x00000252"),
            b"CKM_SHA256_HMAC_GENERAL".to_vec()
        );
        assert_eq!(mechanism_name(b"0xfffffff0"), b"0xfffffff0".to_vec());
        assert_eq!(
            mechanism_name(b"Unknown Mechanism (8000ab)"),
            b"0x8000AB".to_vec()
        );
        assert_eq!(user_type_name(b"0x00000001"), b"CKU_USER".to_vec());
    }
}

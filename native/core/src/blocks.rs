//! Blocks as `pipeline/stream.py` cuts them, line-end folding, and the dialect hints
//! `grammars/spy.py` takes of each block.

use memchr::memmem;

pub const BLOCK_SIZE: usize = 1 << 20;
pub const MAX_BLOCKS_WITHOUT_BLANK: usize = 16;

/// `stream._cut`: the offset just after the last line end followed by a blank line (0: none).
fn cut(buffer: &[u8]) -> usize {
    let a = memmem::rfind(buffer, b"\n\n").map_or(0, |i| i + 1);
    // a "\n\r\n" cut counts only if it is later: search only there
    let from = a.saturating_sub(1);
    let b = memmem::rfind(&buffer[from..], b"\n\r\n").map_or(0, |i| from + i + 1);
    a.max(b)
}

/// `stream.iter_sized_blocks` as a push parser: bytes come in as the stream reads them, and
/// blocks come out where that generator would yield them.
#[derive(Default)]
pub struct Cutter {
    pending: Vec<u8>,
    block_size: usize,
}

impl Cutter {
    pub fn new(block_size: usize) -> Self {
        Cutter {
            pending: Vec::new(),
            block_size: block_size.max(1),
        }
    }

    /// Bytes that are pending already (a range that starts where a whole-file pass had cut,
    /// with the rest of that pass's read): no block is cut from them until the next read.
    pub fn prime(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// One read of the stream; `emit` gets each raw block it completes.
    pub fn read(&mut self, chunk: &[u8], emit: &mut dyn FnMut(&[u8])) {
        if chunk.is_empty() {
            return;
        }
        self.pending.extend_from_slice(chunk);
        if self.pending.len() < self.block_size {
            return;
        }
        let mut at = cut(&self.pending);
        if at == 0 && self.pending.len() > MAX_BLOCKS_WITHOUT_BLANK * self.block_size {
            at = memchr::memrchr(b'\n', &self.pending).map_or(0, |i| i + 1);
        }
        if at > 0 {
            emit(&self.pending[..at]);
            self.pending.drain(..at);
        }
    }

    /// End of the stream: the rest, if any.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
    }
}

/// `text.replace("\r\n", "\n")`: Windows line ends folded (left to right, no overlap).
pub fn fold(raw: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if memchr::memchr(b'\r', raw).is_none() {
        return std::borrow::Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut start = 0;
    for i in memmem::find_iter(raw, b"\r\n") {
        if i < start {
            continue;
        }
        out.extend_from_slice(&raw[start..i]);
        out.push(b'\n');
        start = i + 2;
    }
    out.extend_from_slice(&raw[start..]);
    std::borrow::Cow::Owned(out)
}

/// The dialects of `pkcs11-spy-format.md` §0, in the manifest's spelling (`spy.dialect_hints`).
pub const DIALECTS: [&str; 6] = [
    "<=0.21",
    "0.22-0.23",
    "0.24-0.26",
    "0.24+",
    "0.27",
    "<=0.23",
];

fn blanks_then_newline(rest: &[u8]) -> bool {
    let n = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r'))
        .count();
    rest.get(n) == Some(&b'\n')
}

/// `spy.dialect_hints` of one block: a bit per `DIALECTS` entry.
pub fn dialect_hints(text: &[u8]) -> u8 {
    let mut hints = 0;
    if memmem::find(text, b"pMechanism->type=").is_some()
        || memmem::find(text, b"\npApplication=").is_some()
    {
        hints |= 1;
    }
    let has_pid = memmem::find_iter(text, b"\nP:").any(|i| {
        let r = &text[i + 3..];
        let n = r.iter().take_while(|b| b.is_ascii_digit()).count();
        n > 0 && r[n..].starts_with(b"; T:")
    });
    // `\n\[in\] pMechanism->type = (CKM_\w+ *)[ \t\r]*\n`: the first one's width
    const MECH: &[u8] = b"\n[in] pMechanism->type = CKM_";
    let width = memmem::find_iter(text, MECH).find_map(|i| {
        let r = &text[i + MECH.len()..];
        let w = r
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
            .count();
        if w == 0 {
            return None;
        }
        let s = r[w..].iter().take_while(|&&b| b == b' ').count();
        blanks_then_newline(&r[w + s..]).then_some(4 + w + s)
    });
    const NULL_PARAMETER: &[u8] = b"\n[in] pMechanism->pParameter = NULL";
    let null_parameter = || {
        memmem::find_iter(text, NULL_PARAMETER)
            .any(|i| blanks_then_newline(&text[i + NULL_PARAMETER.len()..]))
    };
    if width == Some(39) || null_parameter() {
        hints |= 1 << 4;
    } else if has_pid {
        hints |= if width.is_some() { 1 << 2 } else { 1 << 3 };
    } else if width.is_some()
        || memmem::find(text, b"\n[compat]").is_some()
        || memmem::find(text, b"\n[in] pApplication = ").is_some()
    {
        hints |= 1 << 1;
    } else if hints == 0 && unprefixed_stamp(text) {
        hints |= 1 << 5;
    }
    hints
}

/// `\n\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}[ \t\r]*\n` somewhere in the text.
fn unprefixed_stamp(text: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', text).any(|i| {
        let r = &text[i + 1..];
        r.len() > 23
            && crate::lines::stamp(&r[..23]).is_some_and(|s| s.pid.is_none())
            && blanks_then_newline(&r[23..])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_like_the_stream() {
        let mut c = Cutter::new(8);
        let mut out = Vec::new();
        c.read(b"ab\n\ncd\nef", &mut |b| out.push(b.to_vec()));
        c.finish(&mut |b| out.push(b.to_vec()));
        assert_eq!(out, vec![b"ab\n".to_vec(), b"\ncd\nef".to_vec()]);
        assert_eq!(&*fold(b"a\r\r\nb\r\n"), b"a\r\nb\n");
    }

    #[test]
    fn hints() {
        assert_eq!(dialect_hints(b"x\nP:1; T:2 2024"), 1 << 3);
        assert_eq!(dialect_hints(b"\n[compat]\n"), 1 << 1);
        let wide = b"\n[in] pMechanism->type = CKM_RSA_PKCS                           \n";
        assert_eq!(dialect_hints(wide), 1 << 4);
        assert_eq!(dialect_hints(b"\n2024-01-01 00:00:00.000 \n"), 1 << 5);
    }
}

//! The `calls` table in columns: Arrow's memory layout (values, validity bitmaps, `i32`
//! offsets), filled a row at a time and handed over a batch at a time.

use crate::body::{self, Fields};
use crate::lines::OutOfRange;

#[derive(Default, Debug, Clone)]
pub struct Bits {
    pub bytes: Vec<u8>,
    pub len: usize,
    pub unset: usize,
}

impl Bits {
    pub fn push(&mut self, on: bool) {
        if self.len.is_multiple_of(8) {
            self.bytes.push(0);
        }
        if on {
            if let Some(last) = self.bytes.last_mut() {
                *last |= 1 << (self.len % 8);
            }
        } else {
            self.unset += 1;
        }
        self.len += 1;
    }
}

/// A column of 64-bit numbers (`u64` or `i64` bits), nullable.
#[derive(Default, Debug, Clone)]
pub struct Numbers {
    pub values: Vec<u64>,
    pub valid: Bits,
}

impl Numbers {
    pub fn push(&mut self, v: Option<u64>) {
        self.values.push(v.unwrap_or(0));
        self.valid.push(v.is_some());
    }
}

/// A column of strings (UTF-8; the log's Latin-1 bytes converted), nullable.
#[derive(Debug, Clone)]
pub struct Strings {
    pub offsets: Vec<i32>,
    pub data: Vec<u8>,
    pub valid: Bits,
}

impl Default for Strings {
    fn default() -> Self {
        Strings {
            offsets: vec![0],
            data: Vec::new(),
            valid: Bits::default(),
        }
    }
}

impl Strings {
    /// Append one Latin-1 string as UTF-8; a string that would carry the column's data past
    /// `i32::MAX` bytes is cut short (Arrow's `string` offsets are 32-bit).
    pub fn push_value(&mut self, latin1: &[u8]) {
        let room = (i32::MAX as usize).saturating_sub(self.data.len());
        if latin1.is_ascii() {
            self.data
                .extend_from_slice(&latin1[..latin1.len().min(room)]);
        } else {
            for &b in latin1 {
                let need = if b < 0x80 { 1 } else { 2 };
                if self.data.len() + need > i32::MAX as usize {
                    break;
                }
                if b < 0x80 {
                    self.data.push(b);
                } else {
                    self.data.push(0xc0 | (b >> 6));
                    self.data.push(0x80 | (b & 0x3f));
                }
            }
        }
        self.offsets
            .push(i32::try_from(self.data.len()).unwrap_or(i32::MAX));
    }

    pub fn push(&mut self, v: Option<&[u8]>) {
        match v {
            Some(s) => self.push_value(s),
            None => self
                .offsets
                .push(i32::try_from(self.data.len()).unwrap_or(i32::MAX)),
        }
        self.valid.push(v.is_some());
    }
}

/// A column of lists (of strings or numbers), nullable; a list is null when it is empty.
#[derive(Debug, Clone)]
pub struct Lists<T> {
    pub offsets: Vec<i32>,
    pub valid: Bits,
    pub items: T,
    count: usize,
}

impl<T: Default> Default for Lists<T> {
    fn default() -> Self {
        Lists {
            offsets: vec![0],
            valid: Bits::default(),
            items: T::default(),
            count: 0,
        }
    }
}

impl<T> Lists<T> {
    fn close(&mut self, added: usize) {
        self.count += added;
        self.offsets
            .push(i32::try_from(self.count).unwrap_or(i32::MAX));
        self.valid.push(added > 0);
    }
}

impl Lists<Strings> {
    pub fn push(&mut self, list: &[Vec<u8>]) {
        for item in list {
            self.items.push_value(item);
            self.items.valid.push(true);
        }
        self.close(list.len());
    }
}

impl Lists<Numbers> {
    pub fn push(&mut self, list: &[u64]) {
        for &item in list {
            self.items.push(Some(item));
        }
        self.close(list.len());
    }
}

/// One call record, as the assembler emits it (its body not yet read).
pub struct Row<'a> {
    pub process: i32,
    pub pid: Option<u128>,
    pub tid: Option<u128>,
    pub seq: u128,
    pub line: u64,
    pub ts: Option<&'a [u8]>,
    pub func: &'a [u8],
    pub rv: Option<(i128, &'a [u8])>,
    pub end_line: u64,
    pub uncertain: bool,
    pub body: &'a [u8],
}

/// Rows of `CALLS_SCHEMA` (less `source`, which the Python side fills), in columns.
#[derive(Default, Debug, Clone)]
pub struct Batch {
    pub rows: usize,
    pub process: Vec<i32>,
    pub pid: Numbers,
    pub tid: Numbers,
    pub seq: Numbers,
    pub line: Numbers,
    pub ts: Numbers,
    pub func: Strings,
    pub rv: Numbers,
    pub rv_name: Strings,
    pub complete: Bits,
    pub slot: Numbers,
    pub session: Numbers,
    pub object: Numbers,
    pub mechanism: Strings,
    pub user_type: Strings,
    pub in_len: Numbers,
    pub out_len: Numbers,
    pub attributes: Lists<Strings>,
    pub created: Lists<Numbers>,
    pub end_line: Numbers,
    pub uncertain: Bits,
    pub secrets: Lists<Strings>,
    pub flags: Lists<Strings>,
    /// Rows came in line order (else the reader sorts the batch).
    pub sorted: bool,
    last_line: u64,
}

fn checked(
    v: Option<Result<u64, OutOfRange>>,
    column: &str,
    flags: &mut Vec<Vec<u8>>,
) -> Option<u64> {
    match v? {
        Ok(v) => Some(v),
        Err(OutOfRange) => {
            flags.push(format!("out-of-range:{column}").into_bytes());
            None
        }
    }
}

/// `records.unsigned`: a printed number as the `CK_ULONG` it stands for (a negative `CK_RV` is
/// a 32-bit, else a 64-bit, `long`'s rendering); `Err`: none fits.
fn unsigned(v: i128) -> Result<u64, OutOfRange> {
    if let Ok(v) = u64::try_from(v) {
        return Ok(v);
    }
    if (-(1i128 << 31)..0).contains(&v) {
        return u64::try_from(v + (1i128 << 32)).map_err(|_| OutOfRange);
    }
    if (-(1i128 << 63)..0).contains(&v) {
        return u64::try_from(v + (1i128 << 64)).map_err(|_| OutOfRange);
    }
    Err(OutOfRange)
}

impl Bits {
    fn get(&self, i: usize) -> bool {
        self.bytes[i / 8] & (1 << (i % 8)) != 0
    }

    fn gather(&self, order: &[usize]) -> Bits {
        let mut out = Bits::default();
        for &i in order {
            out.push(self.get(i));
        }
        out
    }
}

impl Numbers {
    fn gather(&self, order: &[usize]) -> Numbers {
        Numbers {
            values: order.iter().map(|&i| self.values[i]).collect(),
            valid: self.valid.gather(order),
        }
    }
}

fn span(offsets: &[i32], i: usize) -> std::ops::Range<usize> {
    usize::try_from(offsets[i]).unwrap_or(0)..usize::try_from(offsets[i + 1]).unwrap_or(0)
}

impl Strings {
    fn gather(&self, order: &[usize]) -> Strings {
        let mut out = Strings::default();
        for &i in order {
            out.data
                .extend_from_slice(&self.data[span(&self.offsets, i)]);
            out.offsets
                .push(i32::try_from(out.data.len()).unwrap_or(i32::MAX));
            out.valid.push(self.valid.get(i));
        }
        out
    }
}

impl Lists<Strings> {
    fn gather(&self, order: &[usize]) -> Self {
        let mut out = Self::default();
        for &i in order {
            let items = span(&self.offsets, i);
            let n = items.len();
            for j in items {
                out.items
                    .data
                    .extend_from_slice(&self.items.data[span(&self.items.offsets, j)]);
                out.items
                    .offsets
                    .push(i32::try_from(out.items.data.len()).unwrap_or(i32::MAX));
                out.items.valid.push(true);
            }
            out.close(n);
        }
        out
    }
}

impl Lists<Numbers> {
    fn gather(&self, order: &[usize]) -> Self {
        let mut out = Self::default();
        for &i in order {
            let items = span(&self.offsets, i);
            let n = items.len();
            for j in items {
                out.items.push(Some(self.items.values[j]));
            }
            out.close(n);
        }
        out
    }
}

impl Batch {
    /// The rows in line order (records that closed late were emitted after later ones).
    pub fn in_line_order(self) -> Batch {
        if self.sorted {
            return self;
        }
        let mut order: Vec<usize> = (0..self.rows).collect();
        order.sort_by_key(|&i| self.line.values[i]);
        let o = &order[..];
        Batch {
            rows: self.rows,
            process: o.iter().map(|&i| self.process[i]).collect(),
            pid: self.pid.gather(o),
            tid: self.tid.gather(o),
            seq: self.seq.gather(o),
            line: self.line.gather(o),
            ts: self.ts.gather(o),
            func: self.func.gather(o),
            rv: self.rv.gather(o),
            rv_name: self.rv_name.gather(o),
            complete: self.complete.gather(o),
            slot: self.slot.gather(o),
            session: self.session.gather(o),
            object: self.object.gather(o),
            mechanism: self.mechanism.gather(o),
            user_type: self.user_type.gather(o),
            in_len: self.in_len.gather(o),
            out_len: self.out_len.gather(o),
            attributes: self.attributes.gather(o),
            created: self.created.gather(o),
            end_line: self.end_line.gather(o),
            uncertain: self.uncertain.gather(o),
            secrets: self.secrets.gather(o),
            flags: self.flags.gather(o),
            sorted: true,
            last_line: self.last_line,
        }
    }

    pub fn new() -> Self {
        Batch {
            sorted: true,
            ..Batch::default()
        }
    }

    pub fn push(&mut self, row: &Row<'_>) {
        let Fields {
            slot,
            session,
            object,
            mechanism,
            user_type,
            in_len,
            out_len,
            attributes,
            created,
            secrets,
            mut flags,
        } = body::read(row.func, row.body);
        if row.line < self.last_line {
            self.sorted = false;
        }
        self.last_line = row.line;
        self.rows += 1;
        // flags: the template's (or session's), then numbers out of range in the body's
        // columns, then in the record's frame, then a bad stamp (`grammars.body._FLAGS`)
        self.slot.push(checked(slot, "slot", &mut flags));
        self.session.push(checked(session, "session", &mut flags));
        self.object.push(checked(object, "object", &mut flags));
        let handles: Vec<u64> = created.iter().filter_map(|c| c.ok()).collect();
        if handles.len() != created.len() {
            flags.push(b"out-of-range:created".to_vec());
        }
        self.created.push(&handles);
        for (column, name, len) in [
            (&mut self.in_len, "in_len", in_len),
            (&mut self.out_len, "out_len", out_len),
        ] {
            if let Some((_, true)) = len {
                flags.push(format!("out-of-range:{name}").into_bytes());
            }
            column.push(len.map(|(sum, _)| sum));
        }
        let frame = |v: Option<i128>, name: &str, flags: &mut Vec<Vec<u8>>| -> Option<u64> {
            checked(v.map(unsigned), name, flags)
        };
        self.process.push(row.process);
        let pid = frame(row.pid.map(big), "pid", &mut flags);
        self.pid.push(pid);
        let tid = frame(row.tid.map(big), "tid", &mut flags);
        self.tid.push(tid);
        let rv = frame(row.rv.map(|(v, _)| v), "rv", &mut flags);
        self.rv.push(rv);
        let seq = u64::try_from(row.seq)
            .ok()
            .filter(|&s| s <= i64::MAX as u64);
        if seq.is_none() {
            flags.push(b"out-of-range:seq".to_vec());
        }
        self.seq.push(seq);
        self.line.push(Some(row.line));
        let ts = row.ts.and_then(millis);
        if row.ts.is_some() && ts.is_none() {
            flags.push(b"bad-timestamp".to_vec());
        }
        self.ts.push(ts.map(|v| v as u64));
        self.func.push(Some(row.func));
        self.rv_name.push(row.rv.map(|(_, name)| name));
        self.complete.push(row.rv.is_some());
        self.mechanism.push(mechanism.as_deref());
        self.user_type.push(user_type.as_deref());
        self.attributes.push(&attributes);
        self.end_line.push(Some(row.end_line));
        self.uncertain.push(row.uncertain);
        self.secrets.push(&secrets);
        self.flags.push(&flags);
    }
}

fn big(v: u128) -> i128 {
    i128::try_from(v).unwrap_or(i128::MAX)
}

/// Milliseconds since 1970 of a `YYYY-MM-DD HH:MM:SS.mmm` stamp, as Polars' `to_datetime`
/// reads it (`None`: not a real date or time; second 60 is the next minute's 0).
pub fn millis(s: &[u8]) -> Option<i64> {
    if s.len() != 23 {
        return None;
    }
    let num = |a: usize, b: usize| -> i64 {
        s[a..b]
            .iter()
            .fold(0, |v, &d| v * 10 + i64::from(d.wrapping_sub(b'0')))
    };
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    let (hh, mm, ss, ms) = (num(11, 13), num(14, 16), num(17, 19), num(20, 23));
    if y < 1 {
        return None; // years 1-9999 are what every reader takes (`store._stamps`)
    }
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > days_in || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // days from civil (Howard Hinnant's algorithm)
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_in_line_order() {
        let row = |line: u64, func: &'static [u8], body: &'static [u8]| Row {
            process: 0,
            pid: None,
            tid: None,
            seq: line.into(),
            line,
            ts: None,
            func,
            rv: None,
            end_line: line,
            uncertain: false,
            body,
        };
        let mut b = Batch::new();
        b.push(&row(9, b"C_B", b"\n[out] *phObject = 0x5\n"));
        b.push(&row(
            4,
            b"C_A",
            b"\n[in] pTemplate[1]:\n    CKA_CLASS  CKO_DATA\n",
        ));
        let b = b.in_line_order();
        assert_eq!(b.line.values, vec![4, 9]);
        assert_eq!(
            (b.func.data.as_slice(), b.func.offsets.as_slice()),
            (&b"C_AC_B"[..], &[0, 3, 6][..])
        );
        assert_eq!(b.attributes.items.data, b"CKA_CLASS".to_vec());
        assert_eq!(
            (
                b.created.offsets.as_slice(),
                b.created.items.values.as_slice()
            ),
            (&[0, 0, 1][..], &[5][..])
        );
    }

    #[test]
    fn stamps() {
        assert_eq!(millis(b"2024-01-01 23:59:60.123"), Some(1_704_153_600_123));
        assert_eq!(millis(b"0000-01-01 00:00:00.000"), None);
        assert_eq!(millis(b"2024-02-30 10:00:00.000"), None);
        assert_eq!(millis(b"2000-02-29 00:00:00.000"), Some(951_782_400_000));
        assert_eq!(millis(b"1900-02-29 00:00:00.000"), None);
        assert_eq!(millis(b"2024-01-01 24:00:00.000"), None);
    }
}

//! `pipeline._native`: the native scan engine for Python (`pipeline/native.py` is its user).
//!
//! A `Scanner` takes a log's bytes as the stream reads them and hands back record batches as
//! Arrow buffers (`bytes`), which `pipeline.native` wraps into pyarrow arrays without another
//! pass over the values. Every call that scans releases the GIL.

use p11lens_core::assemble::{Coverage, Start};
use p11lens_core::columns::{Batch, Bits, Lists, Numbers, Strings};
use p11lens_core::tracker::Tracker;
use p11lens_core::{Scanner as Core, BATCH_ROWS};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use std::collections::HashMap;

fn bytes<'py>(py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, data)
}

fn words(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn offsets(values: &[i32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn validity<'py>(py: Python<'py>, bits: &Bits) -> Option<Bound<'py, PyBytes>> {
    (bits.unset > 0).then(|| bytes(py, &bits.bytes))
}

fn numbers<'py>(py: Python<'py>, n: &Numbers) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            validity(py, &n.valid).into_pyobject(py)?.into_any(),
            bytes(py, &words(&n.values)).into_any(),
        ],
    )
}

fn strings<'py>(py: Python<'py>, s: &Strings) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            validity(py, &s.valid).into_pyobject(py)?.into_any(),
            bytes(py, &offsets(&s.offsets)).into_any(),
            bytes(py, &s.data).into_any(),
        ],
    )
}

fn string_lists<'py>(py: Python<'py>, l: &Lists<Strings>) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            validity(py, &l.valid).into_pyobject(py)?.into_any(),
            bytes(py, &offsets(&l.offsets)).into_any(),
            (l.items.offsets.len() - 1).into_pyobject(py)?.into_any(),
            bytes(py, &offsets(&l.items.offsets)).into_any(),
            bytes(py, &l.items.data).into_any(),
        ],
    )
}

fn number_lists<'py>(py: Python<'py>, l: &Lists<Numbers>) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            validity(py, &l.valid).into_pyobject(py)?.into_any(),
            bytes(py, &offsets(&l.offsets)).into_any(),
            l.items.values.len().into_pyobject(py)?.into_any(),
            bytes(py, &words(&l.items.values)).into_any(),
        ],
    )
}

fn batch<'py>(py: Python<'py>, b: &Batch) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("rows", b.rows)?;
    let process: Vec<u8> = b.process.iter().flat_map(|v| v.to_le_bytes()).collect();
    d.set_item("process", (None::<Vec<u8>>, bytes(py, &process)))?;
    for (name, col) in [
        ("pid", &b.pid),
        ("tid", &b.tid),
        ("seq", &b.seq),
        ("line", &b.line),
        ("ts", &b.ts),
        ("rv", &b.rv),
        ("slot", &b.slot),
        ("session", &b.session),
        ("object", &b.object),
        ("in_len", &b.in_len),
        ("out_len", &b.out_len),
        ("end_line", &b.end_line),
    ] {
        d.set_item(name, numbers(py, col)?)?;
    }
    for (name, col) in [
        ("func", &b.func),
        ("rv_name", &b.rv_name),
        ("mechanism", &b.mechanism),
        ("user_type", &b.user_type),
    ] {
        d.set_item(name, strings(py, col)?)?;
    }
    for (name, col) in [("complete", &b.complete), ("uncertain", &b.uncertain)] {
        d.set_item(name, (None::<Vec<u8>>, bytes(py, &col.bytes)))?;
    }
    for (name, col) in [
        ("attributes", &b.attributes),
        ("secrets", &b.secrets),
        ("flags", &b.flags),
    ] {
        d.set_item(name, string_lists(py, col)?)?;
    }
    d.set_item("created", number_lists(py, &b.created)?)?;
    Ok(d)
}

fn batches<'py>(py: Python<'py>, list: Vec<Batch>) -> PyResult<Bound<'py, PyList>> {
    let out = PyList::empty(py);
    for b in &list {
        out.append(batch(py, b)?)?;
    }
    Ok(out)
}

fn coverage<'py>(py: Python<'py>, c: &Coverage) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("lines", c.lines)?;
    d.set_item("record_lines", c.record_lines)?;
    d.set_item("banner_lines", c.banner_lines)?;
    d.set_item("blank_lines", c.blank_lines)?;
    d.set_item("unparsed_lines", c.unreadable_lines + c.other_lines)?;
    d.set_item("unreadable_lines", c.unreadable_lines)?;
    d.set_item(
        "unreadable_spans",
        c.unreadable_spans
            .iter()
            .map(|s| s.to_vec())
            .collect::<Vec<_>>(),
    )?;
    d.set_item("other_lines", c.other_lines)?;
    d.set_item(
        "other_spans",
        c.other_spans.iter().map(|s| s.to_vec()).collect::<Vec<_>>(),
    )?;
    Ok(d)
}

/// One scan of a byte range of one log (see `pipeline.native`).
#[pyclass(module = "pipeline._native")]
struct Scanner {
    core: Core,
}

#[pymethods]
impl Scanner {
    /// `start`: where the scan starts in its source (`lines_before`, `process`, `seen`,
    /// `last_pidless`, `next_seq`, `own_from`, `own_to`); none: the start of a file.
    #[new]
    #[pyo3(signature = (start=None, batch_rows=BATCH_ROWS, block_size=1 << 20, hint_bytes=u64::MAX))]
    fn new(
        start: Option<&Bound<'_, PyDict>>,
        batch_rows: usize,
        block_size: usize,
        hint_bytes: u64,
    ) -> PyResult<Self> {
        let mut s = Start::default();
        if let Some(d) = start {
            let get = |k: &str| -> PyResult<Option<Bound<'_, PyAny>>> { d.get_item(k) };
            if let Some(v) = get("lines_before")? {
                s.lines_before = v.extract()?;
            }
            if let Some(v) = get("own_from")? {
                s.own_from = v.extract()?;
            }
            if let Some(v) = get("own_to")? {
                s.own_to = v.extract()?;
            }
            let process: i32 = get("process")?
                .map(|v| v.extract())
                .transpose()?
                .unwrap_or(0);
            let seen: bool = get("seen")?
                .map(|v| v.extract())
                .transpose()?
                .unwrap_or(false);
            let last: i32 = get("last_pidless")?
                .map(|v| v.extract())
                .transpose()?
                .unwrap_or(0);
            let next: HashMap<i32, u128> = get("next_seq")?
                .map(|v| v.extract())
                .transpose()?
                .unwrap_or_default();
            s.tracker = Tracker::new(process, seen, last, next);
        }
        Ok(Scanner {
            core: Core::new(s, batch_rows, block_size, hint_bytes),
        })
    }

    /// Text before the range, read only to warm the state up.
    fn warm(&mut self, py: Python<'_>, data: &[u8]) {
        let core = &mut self.core;
        py.detach(|| core.warm(data));
    }

    /// Bytes already read by a whole-file pass but not cut into a block.
    fn prime(&mut self, data: &[u8]) {
        self.core.prime(data);
    }

    /// One read of the stream; the batches it completed.
    fn read<'py>(&mut self, py: Python<'py>, chunk: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let core = &mut self.core;
        let done = py.detach(|| {
            core.read(chunk);
            core.take_batches()
        });
        batches(py, done)
    }

    /// Stop before the end of the input (a range that has all it owns): the last batches.
    fn stop<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let core = &mut self.core;
        let done = py.detach(|| {
            core.stop();
            core.take_batches()
        });
        batches(py, done)
    }

    /// End of input: the last batches.
    fn finish<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let core = &mut self.core;
        let done = py.detach(|| {
            core.finish();
            core.take_batches()
        });
        batches(py, done)
    }

    /// Lines consumed so far.
    #[getter]
    fn line(&self) -> u64 {
        self.core.line()
    }

    /// A record whose header this scan owns is still open or held.
    fn owns_open_records(&self) -> bool {
        self.core.assembler().owns_open_records()
    }

    /// Counts, coverage, dialects, processes, and the pid -> process map.
    fn report<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let a = self.core.assembler();
        let d = PyDict::new(py);
        let c = &a.counts;
        let counts = PyDict::new(py);
        for (k, v) in [
            ("records", c.records),
            ("complete", c.complete),
            ("incomplete", c.incomplete),
            ("uncertain", c.uncertain),
            ("banners", c.banners),
            ("load_errors", c.load_errors),
        ] {
            counts.set_item(k, v)?;
        }
        d.set_item("counts", counts)?;
        d.set_item("coverage", coverage(py, &a.coverage)?)?;
        d.set_item("dialects", self.core.dialects())?;
        d.set_item(
            "processes_used",
            a.processes_used.iter().copied().collect::<Vec<_>>(),
        )?;
        d.set_item("processes", a.processes())?;
        d.set_item("pid_process", a.tracker.pid_process.clone())?;
        d.set_item("pid_first_line", self.core.pid_first_line().clone())?;
        Ok(d)
    }
}

fn start_dict<'py>(py: Python<'py>, s: &Start) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("lines_before", s.lines_before)?;
    d.set_item("own_from", s.own_from)?;
    d.set_item("own_to", s.own_to)?;
    d.set_item("process", s.tracker.process)?;
    d.set_item("seen", s.tracker.seen)?;
    d.set_item("last_pidless", s.tracker.last_pidless)?;
    d.set_item("next_seq", s.tracker.next_seq.clone())?;
    Ok(d)
}

/// Cut a file (its path as bytes, `os.fsencode`) into ranges for `workers` threads (one
/// range: not worth it); each a dict of
/// `warm_from`, `start`, `read_to`, `end` (byte offsets) and `state` (a `Scanner`'s start).
#[pyfunction]
fn plan<'py>(
    py: Python<'py>,
    path: &[u8],
    workers: usize,
    block_size: u64,
    min_range: u64,
    warmup: u64,
) -> PyResult<Bound<'py, PyList>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(path));
    let ranges = py
        .detach(|| p11lens_core::plan::plan(path, workers, block_size, min_range, warmup))
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", path.display())))?;
    let out = PyList::empty(py);
    for r in &ranges {
        let d = PyDict::new(py);
        d.set_item("warm_from", r.warm_from)?;
        d.set_item("start", r.start)?;
        d.set_item("read_to", r.read_to)?;
        d.set_item("end", r.end)?;
        d.set_item("state", start_dict(py, &r.start_state)?)?;
        out.append(d)?;
    }
    Ok(out)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Scanner>()?;
    m.add_function(wrap_pyfunction!(plan, m)?)?;
    Ok(())
}

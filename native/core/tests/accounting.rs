//! The accounting invariant on the repository's logs and on the fuzzer's kept inputs
//! (`native/fuzz/regressions`: crashes and a minimized corpus), at several block sizes.

use std::path::Path;

fn inputs() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut out = Vec::new();
    for dir in [
        "sample-logs",
        "tests/data/spy-examples",
        "native/fuzz/regressions",
    ] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            out.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    out.sort();
    out
}

#[test]
fn every_line_is_accounted_for() {
    let inputs = inputs();
    assert!(inputs.len() > 40, "the repository's logs are found");
    for path in inputs {
        let data = std::fs::read(&path).unwrap_or_default();
        for block in [1 << 20, 4096, 64] {
            if let Err(e) = p11lens_core::check_accounting(&data, block) {
                panic!("{}: block {block}: {e}", path.display());
            }
        }
    }
}

#[test]
fn small_blocks_read_the_same_rows() {
    // blocks are cut at blank lines: their size changes no row (only the dialect hints and
    // the order in which overlapping records are emitted)
    for path in inputs()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
    {
        let data = std::fs::read(path).unwrap_or_default();
        let rows = |block| {
            let (batches, s) = p11lens_core::scan_all(&data, block);
            let mut lines: Vec<(u64, u64, i32)> = batches
                .iter()
                .flat_map(|b| {
                    (0..b.rows).map(move |i| (b.line.values[i], b.end_line.values[i], b.process[i]))
                })
                .collect();
            lines.sort_unstable();
            (
                lines,
                s.assembler().coverage.clone(),
                s.assembler().counts.clone(),
            )
        };
        assert_eq!(rows(1 << 20), rows(97), "{}", path.display());
    }
}

//! Scan a log and print the record count and the time taken: `cargo run --release --example scan LOG`.
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_default();
    let data = std::fs::read(&path)?;
    let t = Instant::now();
    let (batches, scanner) = p11lens_core::scan_all(&data, 1 << 20);
    let rows: usize = batches.iter().map(|b| b.rows).sum();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{rows} rows, {} lines, {secs:.3} s, {:.0} MB/s",
        scanner.assembler().coverage.lines,
        data.len() as f64 / secs / 1e6
    );
    Ok(())
}

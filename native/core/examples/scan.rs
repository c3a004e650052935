//! Scan a log as the Python face does (1 MiB reads) and print the rows and the time taken:
//! `cargo run --release --example scan LOG`.
use std::io::Read;
use std::time::Instant;

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_default();
    let mut file = std::fs::File::open(&path)?;
    let t = Instant::now();
    let mut s = p11lens_core::Scanner::new(
        Default::default(),
        p11lens_core::BATCH_ROWS,
        1 << 20,
        u64::MAX,
    );
    let mut chunk = vec![0u8; 1 << 20];
    let (mut rows, mut size) = (0, 0);
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        size += n;
        s.read(&chunk[..n]);
        rows += s.take_batches().iter().map(|b| b.rows).sum::<usize>();
    }
    s.finish();
    rows += s.take_batches().iter().map(|b| b.rows).sum::<usize>();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{rows} rows, {secs:.3} s, {:.0} MB/s",
        size as f64 / secs / 1e6
    );
    Ok(())
}

//! Log output that never blocks the thread that logs: lines are appended to a bounded
//! in-memory buffer and a thread of their own writes them out in batches, one `write`
//! for everything that arrived meanwhile. A line that does not fit (the output is slower
//! than the logging: a full disk, a stalled pipe) is dropped whole and counted
//! ([`Output::dropped`], `borough_log_lines_dropped_total`), never split or waited for.
//!
//! The buffer is one `Vec` under a mutex, swapped out by the writer: appending a line is
//! a copy into memory already there, with no allocation and no channel message per line.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The bytes waiting for the writer, at most `limit` of them.
struct Pending {
    bytes: Vec<u8>,
    /// Set by [`Output::flush`]: the writer wakes and writes even an empty buffer, then
    /// bumps `flushed`.
    flush_asked: u64,
    flushed: u64,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when bytes or a flush request arrive (to the writer) and when a flush
    /// is done (to [`Output::flush`]).
    wake: Condvar,
    done: Condvar,
    limit: usize,
    dropped: AtomicU64,
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A non-blocking, batched, bounded log output. Cheap to clone; every clone appends to
/// the same buffer.
#[derive(Clone)]
pub struct Output {
    shared: Arc<Shared>,
}

impl Output {
    /// Starts the writer thread over `out`, with room for `limit` bytes not yet written.
    pub fn spawn(out: Box<dyn Write + Send>, limit: usize) -> std::io::Result<Output> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                bytes: Vec::with_capacity(limit.min(64 * 1024)),
                flush_asked: 0,
                flushed: 0,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            limit,
            dropped: AtomicU64::new(0),
        });
        let writer = shared.clone();
        std::thread::Builder::new()
            .name("borough-log".to_owned())
            .spawn(move || write_out(&writer, out))?;
        Ok(Output { shared })
    }

    /// Appends one whole line (or drops it, counted, when the buffer is full).
    pub fn line(&self, line: &[u8]) {
        let mut pending = lock(&self.shared.pending);
        if pending.bytes.len() + line.len() > self.shared.limit {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        drop(pending);
        if was_empty {
            self.shared.wake.notify_one();
        }
    }

    /// Lines dropped so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits (up to `timeout`) until everything appended before this call is written.
    pub fn flush(&self, timeout: Duration) {
        let mut pending = lock(&self.shared.pending);
        pending.flush_asked += 1;
        let ticket = pending.flush_asked;
        self.shared.wake.notify_one();
        let deadline = std::time::Instant::now() + timeout;
        while pending.flushed < ticket {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            pending = self
                .shared
                .done
                .wait_timeout(pending, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

/// The writer thread: takes the whole buffer, writes it in one go, repeats.
fn write_out(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let ticket = {
            let mut pending = lock(&shared.pending);
            while pending.bytes.is_empty() && pending.flush_asked == pending.flushed {
                pending = shared
                    .wake
                    .wait(pending)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            std::mem::swap(&mut batch, &mut pending.bytes);
            pending.flush_asked
        };
        // A failed write (closed pipe, full disk) loses this batch, counted as lines.
        if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
            let lines = batch.iter().filter(|b| **b == b'\n').count() as u64;
            shared.dropped.fetch_add(lines.max(1), Ordering::Relaxed);
        }
        batch.clear();
        // Keep the buffers from holding on to a burst's worth of memory forever.
        batch.shrink_to(64 * 1024);
        let mut pending = lock(&shared.pending);
        pending.flushed = pending.flushed.max(ticket);
        shared.done.notify_all();
    }
}

/// What `tracing_subscriber::fmt` writes each formatted line to.
pub struct LineWriter<'a>(&'a Output);

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        // The fmt layer hands over each event as one whole, formatted line.
        self.0.line(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Output {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records what reaches it, optionally stuck until released.
    #[derive(Clone, Default)]
    struct Recorder {
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (stuck, released) = &*self.gate;
            let mut stuck = stuck.lock().unwrap_or_else(|p| p.into_inner());
            while *stuck {
                stuck = released.wait(stuck).unwrap_or_else(|p| p.into_inner());
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.written
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_whole_in_order_and_batched() -> std::io::Result<()> {
        let recorder = Recorder::default();
        let output = Output::spawn(Box::new(recorder.clone()), 1 << 20)?;
        for i in 0..1000 {
            output.line(format!("line {i}\n").as_bytes());
        }
        output.flush(Duration::from_secs(5));
        let written =
            String::from_utf8_lossy(&recorder.written.lock().unwrap_or_else(|p| p.into_inner()))
                .to_string();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(written, expected);
        assert!(
            recorder.writes.load(Ordering::Relaxed) < 1000,
            "one write per line: not batched"
        );
        assert_eq!(output.dropped(), 0);
        Ok(())
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_instead_of_blocking() -> std::io::Result<()> {
        let recorder = Recorder::default();
        *recorder.gate.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        let output = Output::spawn(Box::new(recorder.clone()), 100)?;
        // The writer takes the first line and is stuck writing it; 100 bytes of room.
        output.line(b"first line, taken by the stuck writer\n");
        std::thread::sleep(Duration::from_millis(50));
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            output.line(b"0123456789012345678\n"); // 20 bytes: 5 fit
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "logging waited for the output"
        );
        assert_eq!(output.dropped(), 995);
        // Released, the kept lines are written whole.
        let (stuck, released) = &*recorder.gate;
        *stuck.lock().unwrap_or_else(|p| p.into_inner()) = false;
        released.notify_all();
        output.flush(Duration::from_secs(5));
        let written = recorder
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert_eq!(
            written.len(),
            "first line, taken by the stuck writer\n".len() + 5 * 20
        );
        Ok(())
    }
}

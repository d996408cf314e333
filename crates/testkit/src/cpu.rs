//! CPU time of processes, from `/proc/<pid>/stat`, for the benchmarks' "CPU per request".
//!
//! A [`Tree`] is a process and every process below it (PostgreSQL's postmaster and its
//! backends, say). Its CPU is the live processes' own user and system time plus the
//! root's `cutime`/`cstime`: a child that exits is reaped by its parent and its whole
//! CPU lands there, so a backend that comes or goes inside the window is counted once, in
//! full, either way.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};

/// The kernel's clock ticks per second as `/proc` reports them (`USER_HZ`: 100 on Linux's
/// common architectures).
const TICKS_PER_SECOND: u64 = 100;

/// One process's fields from `/proc/<pid>/stat`, in ticks.
#[derive(Debug, Clone, Copy)]
struct Stat {
    parent: u32,
    own: u64,
    reaped_children: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command (which may hold spaces and parentheses) ends at the last ')'.
    let (_, after) = text.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the command: state (0), ppid (1), …, utime (11), stime (12), cutime (13),
    // cstime (14).
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        parent: u32::try_from(number(1)?).ok()?,
        own: number(11)? + number(12)?,
        reaped_children: number(13)? + number(14)?,
    })
}

/// A process and its descendants, measured together.
#[derive(Debug, Clone, Copy)]
pub struct Tree {
    pub root: u32,
}

impl Tree {
    /// CPU time the tree has used so far (see the module's documentation).
    pub fn cpu(&self) -> Result<Duration> {
        let root =
            stat(self.root).with_context(|| format!("process {} is not running", self.root))?;
        let mut stats: HashMap<u32, Stat> = HashMap::new();
        for entry in std::fs::read_dir("/proc")? {
            let Some(pid) = entry?
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(s) = stat(pid) {
                stats.insert(pid, s);
            }
        }
        let below = |mut pid: u32| {
            // Walks up the parents: is `root` among them?
            for _ in 0..64 {
                match stats.get(&pid) {
                    Some(s) if s.parent == self.root => return true,
                    Some(s) if s.parent > 1 => pid = s.parent,
                    _ => return false,
                }
            }
            false
        };
        let ticks = root.own
            + root.reaped_children
            + stats
                .iter()
                .filter(|(pid, _)| **pid != self.root && below(**pid))
                .map(|(_, s)| s.own)
                .sum::<u64>();
        Ok(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
    }
}

/// Processes measured over one window: [`Window::start`], then [`Window::spent`] with the
/// CPU each used since.
pub struct Window {
    trees: Vec<(String, Tree, Duration)>,
}

impl Window {
    /// Starts measuring `processes` (name, root pid).
    pub fn start(processes: &[(&str, u32)]) -> Result<Window> {
        let trees = processes
            .iter()
            .map(|(name, pid)| {
                let tree = Tree { root: *pid };
                Ok(((*name).to_owned(), tree, tree.cpu()?))
            })
            .collect::<Result<_>>()?;
        Ok(Window { trees })
    }

    /// CPU each process used since [`Window::start`], in the order given.
    pub fn spent(&self) -> Result<Vec<(String, Duration)>> {
        self.trees
            .iter()
            .map(|(name, tree, before)| Ok((name.clone(), tree.cpu()?.saturating_sub(*before))))
            .collect()
    }
}

/// CPU this process has used itself (its threads; not its children).
pub fn own() -> Result<Duration> {
    let me = stat(std::process::id()).context("reading /proc/self/stat")?;
    Ok(Duration::from_millis(me.own * 1000 / TICKS_PER_SECOND))
}

/// CPU this process's children used that have exited and been waited for (a load
/// generator run to completion, say): this process's `cutime` + `cstime`.
pub fn reaped_children() -> Result<Duration> {
    let me = stat(std::process::id()).context("reading /proc/self/stat")?;
    Ok(Duration::from_millis(
        me.reaped_children * 1000 / TICKS_PER_SECOND,
    ))
}

/// The postmaster's pid of the cluster in `data_dir` (first line of `postmaster.pid`).
pub fn postmaster_pid(data_dir: &std::path::Path) -> Result<u32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .context("reading postmaster.pid")?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .context("no pid in postmaster.pid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_that_exits_is_counted_in_its_parents_tree() -> Result<()> {
        let me = std::process::id();
        let tree = Tree { root: me };
        let before = tree.cpu()?;
        // A child that only computes (a shell loop, no I/O) and exits, reaped by `status`:
        // its time is CPU (at least 0.1 s of it, on any machine), shared with whatever
        // else runs.
        let started = std::time::Instant::now();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg("i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done")
            .status()?;
        let took = started.elapsed();
        assert!(status.success());
        let spent = tree.cpu()? - before;
        assert!(
            spent >= Duration::from_millis(100),
            "the child's CPU was not counted: {spent:?} in {took:?}"
        );
        Ok(())
    }
}

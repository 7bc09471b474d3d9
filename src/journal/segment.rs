//! The open segment file, through which the writer's every write, sync and cut passes, so
//! that tests and the simulator can inject the faults a disk has: a full disk that takes part
//! of a write, a sync or a truncate that fails, a sync that stalls, and a power loss in the
//! middle of a write (after which nothing succeeds, and only what was synced survives).

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Faults to inject into the writer's segment I/O, shared with the test that sets them.
pub(crate) type Faults = Arc<parking_lot::Mutex<FaultPlan>>;

/// What the injected faults are now, and what the current segment holds.
#[derive(Clone, Debug, Default)]
pub(crate) struct FaultPlan {
    /// Bytes the disk still takes; a write past them writes what fits and fails `StorageFull`
    /// (`None`: unbounded).
    pub space_left_bytes: Option<u64>,
    /// Every sync fails.
    pub fail_sync: bool,
    /// Cutting a segment back (after a failed write) fails.
    pub fail_cut: bool,
    /// Each sync stalls this long first.
    pub sync_delay: Option<Duration>,
    /// The power fails once this many more bytes are written: what fits is written, then every
    /// write, sync and cut fails. (The caller then keeps only what was synced: `synced_len`.)
    pub crash_after_bytes: Option<u64>,
    /// The power has failed.
    pub crashed: bool,
    /// Bytes of the current segment written, and synced.
    pub written_len: u64,
    pub synced_len: u64,
}

fn injected(what: &str) -> std::io::Error {
    std::io::Error::other(format!("{what} (injected)"))
}

/// The open segment, through which every write, sync and cut passes (so faults can be
/// injected there).
pub(crate) struct Segment {
    pub(crate) file: File,
    pub(crate) faults: Option<Faults>,
}

impl Segment {
    /// The segment `file`, `len` bytes long and synced.
    pub(crate) fn new(file: File, faults: Option<Faults>, len: u64) -> Segment {
        if let Some(faults) = &faults {
            let mut plan = faults.lock();
            (plan.written_len, plan.synced_len) = (len, len);
        }
        Segment { file, faults }
    }

    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(faults) = &self.faults else { return self.file.write_all(bytes) };
        let mut plan = faults.lock();
        if plan.crashed {
            return Err(injected("power lost"));
        }
        let mut fits = bytes.len() as u64;
        if let Some(left) = plan.crash_after_bytes {
            fits = fits.min(left);
        }
        if let Some(left) = plan.space_left_bytes {
            fits = fits.min(left);
        }
        // What fits is written, as a real disk does: whole frames may land before the error.
        self.file.write_all(&bytes[..fits as usize])?;
        plan.written_len += fits;
        plan.crash_after_bytes = plan.crash_after_bytes.map(|left| left - fits);
        plan.space_left_bytes = plan.space_left_bytes.map(|left| left - fits);
        if fits < bytes.len() as u64 {
            if plan.crash_after_bytes == Some(0) {
                plan.crashed = true;
                return Err(injected("power lost"));
            }
            return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left (injected)"));
        }
        Ok(())
    }

    /// Syncs the data written.
    pub(crate) fn sync_data(&mut self) -> std::io::Result<()> {
        self.sync(File::sync_data)
    }

    /// Syncs data and metadata (after a cut, or a new segment's header).
    pub(crate) fn sync_all(&mut self) -> std::io::Result<()> {
        self.sync(File::sync_all)
    }

    /// Runs `sync` on the file unless a fault says it fails; what it covers counts as synced.
    fn sync(&mut self, sync: fn(&File) -> std::io::Result<()>) -> std::io::Result<()> {
        let Some(faults) = &self.faults else { return sync(&self.file) };
        let delay = faults.lock().sync_delay;
        if let Some(delay) = delay {
            std::thread::sleep(delay);
        }
        let mut plan = faults.lock();
        if plan.crashed || plan.fail_sync {
            return Err(injected("sync failed"));
        }
        sync(&self.file)?;
        plan.synced_len = plan.written_len;
        Ok(())
    }

    pub(crate) fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        let Some(faults) = &self.faults else { return self.file.set_len(len) };
        let mut plan = faults.lock();
        if plan.crashed || plan.fail_cut {
            return Err(injected("truncate failed"));
        }
        self.file.set_len(len)?;
        plan.written_len = len;
        plan.synced_len = plan.synced_len.min(len);
        Ok(())
    }
}

//! The open segment file, through which the writer's every write, sync and cut passes, so
//! that tests and the simulator can inject the faults a disk has: a full disk that takes part
//! of a write, a sync that fails, a truncate that fails.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;

/// Faults to inject into the writer's segment I/O, shared with the test that sets them.
pub(crate) type Faults = Arc<parking_lot::Mutex<FaultPlan>>;

/// What the injected faults are now.
#[derive(Clone, Debug, Default)]
pub(crate) struct FaultPlan {
    /// Bytes the disk still takes; a write past them writes what fits and fails `StorageFull`
    /// (`None`: unbounded).
    pub space_left_bytes: Option<u64>,
    /// Every sync fails.
    pub fail_sync: bool,
    /// Cutting a segment back (after a failed write) fails.
    pub fail_cut: bool,
}

/// The open segment, through which every write, sync and cut passes (so faults can be
/// injected there).
pub(crate) struct Segment {
    pub(crate) file: File,
    pub(crate) faults: Option<Faults>,
}

impl Segment {
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(faults) = &self.faults {
            let mut plan = faults.lock();
            if let Some(left) = plan.space_left_bytes {
                if bytes.len() as u64 > left {
                    // What fits is written, as a real disk does: whole frames may land.
                    self.file.write_all(&bytes[..left as usize])?;
                    plan.space_left_bytes = Some(0);
                    return Err(std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left (injected)"));
                }
                plan.space_left_bytes = Some(left - bytes.len() as u64);
            }
        }
        self.file.write_all(bytes)
    }

    pub(crate) fn sync_data(&mut self) -> std::io::Result<()> {
        if self.faults.as_ref().is_some_and(|f| f.lock().fail_sync) {
            return Err(std::io::Error::other("sync failed (injected)"));
        }
        self.file.sync_data()
    }

    pub(crate) fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        if self.faults.as_ref().is_some_and(|f| f.lock().fail_cut) {
            return Err(std::io::Error::other("truncate failed (injected)"));
        }
        self.file.set_len(len)
    }
}

//! The weight writer's output side: 8 MiB blocks, 4 KiB-aligned for O_DIRECT, filled by the
//! merging thread (`Sink`), hashed by one thread (sha256) and written by another, then handed back
//! for reuse. Used by `weights::rewrite`.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};

const ALIGN: usize = 4096; // O_DIRECT wants offsets, lengths and buffers aligned to this
pub(crate) const BLOCK: usize = 8 << 20; // bytes handed to the hashing and writing threads at a time
pub(crate) const BLOCKS: usize = 6; // blocks in flight at most: one filling, the rest queued, hashed or written

/// A zeroed, 4 KiB-aligned buffer of BLOCK bytes (O_DIRECT needs the alignment).
pub(crate) struct Aligned(std::ptr::NonNull<u8>);

// SAFETY: the buffer is owned by one thread at a time (it moves through channels).
unsafe impl Send for Aligned {}

impl Aligned {
    const LAYOUT: std::alloc::Layout = match std::alloc::Layout::from_size_align(BLOCK, ALIGN) {
        Ok(layout) => layout,
        Err(_) => panic!("bad block layout"),
    };

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        Self(
            std::ptr::NonNull::new(ptr)
                .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::LAYOUT)),
        )
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: BLOCK bytes were allocated and are owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), BLOCK) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), Self::LAYOUT) }
    }
}

/// Fills blocks and hands each full one to the hashing thread; blocks come back for reuse.
pub(crate) struct Sink {
    block: Option<Aligned>,
    fill: usize,
    to_hasher: SyncSender<(Aligned, usize)>,
    free: Receiver<Aligned>,
    allocated: usize,
}

impl Sink {
    pub(crate) fn new(to_hasher: SyncSender<(Aligned, usize)>, free: Receiver<Aligned>) -> Self {
        Self {
            block: Some(Aligned::new()),
            fill: 0,
            to_hasher,
            free,
            allocated: 1,
        }
    }

    /// The free part of the current block (never empty); say how much of it was written
    /// with `filled`.
    pub(crate) fn space(&mut self) -> Result<&mut [u8]> {
        self.flush_if_full()?;
        let fill = self.fill;
        Ok(&mut self
            .block
            .as_mut()
            .expect("a sink always holds a block")
            .bytes()[fill..])
    }

    pub(crate) fn filled(&mut self, n: usize) {
        self.fill += n;
    }

    pub(crate) fn append(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let space = self.space()?;
            let n = space.len().min(data.len());
            space[..n].copy_from_slice(&data[..n]);
            self.filled(n);
            data = &data[n..];
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<()> {
        if self.fill == BLOCK {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<()> {
        let full = self.block.take().expect("a sink always holds a block");
        if self.to_hasher.send((full, self.fill)).is_err() {
            bail!("the writer stopped");
        }
        self.block = Some(match self.free.try_recv() {
            Ok(block) => block,
            Err(_) if self.allocated < BLOCKS => {
                self.allocated += 1;
                Aligned::new()
            }
            Err(_) => self
                .free
                .recv()
                .map_err(|_| anyhow::anyhow!("the writer stopped"))?,
        });
        self.fill = 0;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> Result<()> {
        if self.fill > 0 {
            self.send()?;
        }
        Ok(())
    }
}

pub(crate) fn open_output(path: &Path) -> Result<(File, bool)> {
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(flags)
            .open(path)
    };
    #[cfg(target_os = "linux")]
    match open(libc::O_DIRECT) {
        Ok(file) => return Ok((file, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {} // tmpfs and others: no direct I/O
        Err(e) => return Err(e).with_context(|| format!("{}: cannot create", path.display())),
    }
    Ok((
        open(0).with_context(|| format!("{}: cannot create", path.display()))?,
        false,
    ))
}

/// The hashing thread: hashes each block and passes it on to the writer; returns the hex
/// sha256. Hashing and writing each take about a second for a 1B model on this project's box,
/// so they run side by side.
pub(crate) fn hash_blocks(
    blocks: Receiver<(Aligned, usize)>,
    to_writer: SyncSender<(Aligned, usize)>,
) -> String {
    let mut hasher = Sha256::new();
    for (mut block, len) in blocks {
        hasher.update(&block.bytes()[..len]);
        if to_writer.send((block, len)).is_err() {
            break; // the writer failed: it reports why
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The writing thread: writes each block and hands it back for reuse.
pub(crate) fn write_blocks(
    mut file: File,
    mut direct: bool,
    blocks: Receiver<(Aligned, usize)>,
    give_back: SyncSender<Aligned>,
) -> Result<()> {
    let mut written = 0u64;
    for (mut block, len) in blocks {
        // Only the last block is short; with O_DIRECT it goes out padded, then the file is cut back.
        let padded = if direct {
            len.div_ceil(ALIGN) * ALIGN
        } else {
            len
        };
        block.bytes()[len..padded].fill(0);
        match file.write_all(&block.bytes()[..padded]) {
            // Some filesystems accept O_DIRECT at open and refuse the write: nothing is written
            // yet if this is the first block, so go on with plain writes.
            #[cfg(target_os = "linux")]
            Err(e) if direct && written == 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                use std::os::fd::AsRawFd;
                // SAFETY: fcntl on a file descriptor this function owns.
                unsafe {
                    let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
                    libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT);
                }
                direct = false;
                file.set_len(0)?;
                file.write_all_at(&block.bytes()[..len], 0)?;
                std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(len as u64))?;
            }
            other => other?,
        }
        written += len as u64;
        let _ = give_back.try_send(block);
    }
    if direct {
        file.set_len(written)?;
    }
    Ok(())
}

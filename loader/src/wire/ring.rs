/*!
The shared-memory ring of batch slots between the daemon and one client.

One anonymous memory file (`memfd`) per client, sized once and sealed against resizing, so a
client can neither shrink it under the daemon (which would be a SIGBUS in a worker) nor see
anyone else's batches: it is reachable only through the descriptor the daemon passes over the
socket (docs/design.md invariant 7). Workers write augmented images straight into a slot, and the
client reads the slot in place (invariant 5); slot ownership moves by socket messages
(batch-ready / release), so the memory needs no locks.

```text
offset 0          ring header (one page): magic, version, the layout below
offset page       slot 0: meta (64 B) | labels [B] u32 | record ids [B] u32 | pad to a page
                          | images [B, H, W, 3] u8 | pad to a page
offset page + k·S slot k
```
Memory per client: `page + slots × S`, with `S ≈ B × H × W × 3` (see [`RingLayout::total_bytes`]).
*/

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::{Mmap, MmapMut};
use nix::fcntl::{FallocateFlags, FcntlArg, SealFlag, fallocate, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use serde::{Deserialize, Serialize};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// First bytes of a ring.
pub const RING_MAGIC: [u8; 8] = *b"RSBRING\0";
/// Layout version; bumped on any change of the header or slot layout.
pub const RING_VERSION: u32 = 1;
const PAGE: u64 = 4096;
/// Bytes of a slot's metadata block.
const META_BYTES: u64 = 64;

/// Errors creating or attaching a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The layout's numbers are zero, overflow or exceed the configured limit.
    #[error("ring layout {0}")]
    Layout(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The machine had no memory for the ring (its shared memory, or a file size limit set
    /// on the daemon, `ulimit -f`): this client is refused, the daemon serves the others.
    #[error(
        "no memory for a ring of {bytes} bytes ({source}); ask for fewer slots or a smaller \
         batch, or free memory on the loader's machine"
    )]
    NoMemory {
        /// The ring's size.
        bytes: u64,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The shared memory does not hold the ring the layout describes.
    #[error("shared memory does not match the announced ring: {0}")]
    Mismatch(String),
}

/// A failure to size or allocate a ring of `bytes`: a shortage the client can act on
/// (ENOSPC, ENOMEM, EFBIG past a file size limit) as [`RingError::NoMemory`], anything else as
/// what it is.
fn allocating(what: &'static str, bytes: u64) -> impl FnOnce(std::io::Error) -> RingError {
    move |source| match source.raw_os_error() {
        Some(libc::ENOSPC | libc::ENOMEM | libc::EFBIG) => RingError::NoMemory { bytes, source },
        _ => RingError::Sys { what, source },
    }
}

fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> RingError {
    move |source| RingError::Sys { what, source }
}

fn nix_sys(what: &'static str) -> impl FnOnce(nix::Error) -> RingError {
    move |e| RingError::Sys {
        what,
        source: std::io::Error::from(e),
    }
}

/// Geometry of a ring: how many slots, what each holds, where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingLayout {
    /// Number of batch slots.
    pub slots: u32,
    /// Samples per slot.
    pub batch_size: u32,
    /// Image height.
    pub height: u32,
    /// Image width.
    pub width: u32,
    /// Channels (3: RGB).
    pub channels: u32,
}

/// The ring's first bytes, a copy of the layout that an attaching client checks.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RingHeader {
    magic: [u8; 8],
    version: u32,
    slots: u32,
    batch_size: u32,
    height: u32,
    width: u32,
    channels: u32,
    slot_bytes: u64,
}

/// What a slot holds besides its pixels.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SlotMeta {
    /// Epoch of the batch.
    pub epoch: u32,
    /// Samples in the batch (the batch size, or fewer for the last eval batch).
    pub count: u32,
    /// Step of the batch within its epoch.
    pub step: u64,
    /// Batches the daemon has written into this ring before this one.
    pub sequence: u64,
    reserved: [u64; 5],
}

impl SlotMeta {
    /// Metadata of the batch at (`epoch`, `step`) with `count` samples, the `sequence`-th batch
    /// written into the ring.
    pub fn new(epoch: u32, step: u64, count: u32, sequence: u64) -> SlotMeta {
        SlotMeta {
            epoch,
            count,
            step,
            sequence,
            reserved: [0; 5],
        }
    }
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

impl RingLayout {
    /// Bytes of one image.
    pub fn image_bytes(&self) -> u64 {
        u64::from(self.height) * u64::from(self.width) * u64::from(self.channels)
    }

    fn labels_offset(&self) -> u64 {
        META_BYTES
    }

    fn ids_offset(&self) -> u64 {
        META_BYTES + 4 * u64::from(self.batch_size)
    }

    fn images_offset(&self) -> u64 {
        round_up(META_BYTES + 8 * u64::from(self.batch_size), PAGE)
    }

    /// Distance between slots (page-aligned).
    pub fn slot_bytes(&self) -> u64 {
        round_up(
            self.images_offset() + u64::from(self.batch_size) * self.image_bytes(),
            PAGE,
        )
    }

    /// Size of the whole ring: one header page plus `slots × slot_bytes`.
    pub fn total_bytes(&self) -> u64 {
        PAGE + u64::from(self.slots) * self.slot_bytes()
    }

    fn slot_offset(&self, slot: u32) -> u64 {
        PAGE + u64::from(slot) * self.slot_bytes()
    }

    /// Checks the numbers: nothing zero, at most `max_bytes` in all.
    pub fn check(&self, max_bytes: u64) -> Result<(), RingError> {
        if self.slots == 0 || self.batch_size == 0 || self.image_bytes() == 0 {
            return Err(RingError::Layout(format!("has a zero dimension: {self:?}")));
        }
        // 2^16 on every dimension keeps every product below in u64.
        let big = [self.slots, self.batch_size, self.height, self.width];
        if big.iter().any(|&d| d > 1 << 16) || self.channels > 4 {
            return Err(RingError::Layout(format!("is implausibly large: {self:?}")));
        }
        if self.total_bytes() > max_bytes {
            return Err(RingError::Layout(format!(
                "needs {} bytes, more than the limit of {max_bytes} (fewer slots or a smaller \
                 batch)",
                self.total_bytes()
            )));
        }
        Ok(())
    }

    fn header(&self) -> RingHeader {
        RingHeader {
            magic: RING_MAGIC,
            version: RING_VERSION,
            slots: self.slots,
            batch_size: self.batch_size,
            height: self.height,
            width: self.width,
            channels: self.channels,
            slot_bytes: self.slot_bytes(),
        }
    }
}

/// A slot, writable: the daemon's side.
pub struct SlotMut<'a> {
    /// Metadata.
    pub meta: &'a mut SlotMeta,
    /// One label per sample.
    pub labels: &'a mut [u32],
    /// The record each sample was made from.
    pub ids: &'a mut [u32],
    /// `batch_size` images, NHWC uint8.
    pub images: &'a mut [u8],
}

/// A slot, read-only: the client's side.
#[derive(Debug, Clone, Copy)]
pub struct SlotRef<'a> {
    /// Metadata.
    pub meta: &'a SlotMeta,
    /// One label per sample.
    pub labels: &'a [u32],
    /// The record each sample was made from.
    pub ids: &'a [u32],
    /// `batch_size` images, NHWC uint8.
    pub images: &'a [u8],
}

/// The daemon's end of a ring: owns the memory file and a writable mapping.
pub struct Ring {
    layout: RingLayout,
    file: File,
    map: MmapMut,
}

impl Ring {
    /// Creates the memory file, sizes and seals it, maps it and writes the header. The memory
    /// is allocated at once, so the daemon's size does not creep up while it runs and a
    /// shortage is an error here, not a SIGBUS in a worker.
    pub fn create(layout: RingLayout, max_bytes: u64) -> Result<Ring, RingError> {
        layout.check(max_bytes)?;
        let fd = memfd_create(
            c"rsb-loader-ring",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(nix_sys("memfd_create"))?;
        let file = File::from(fd);
        file.set_len(layout.total_bytes())
            .map_err(allocating("sizing the ring", layout.total_bytes()))?;
        // The pages are allocated in the file, not faulted into this process's mapping
        // (MAP_POPULATE): populating holds the process's memory-map lock for as long as the
        // kernel zeroes the ring (40 ms for 73 MB here), and every allocation of every other
        // client's workers waits on that lock. Mapping them is then a cheap minor fault per
        // 64 KiB, on first write.
        let len = libc::off_t::try_from(layout.total_bytes())
            .map_err(|_| RingError::Layout(format!("{} bytes", layout.total_bytes())))?;
        fallocate(&file, FallocateFlags::empty(), 0, len).map_err(|e| {
            allocating("allocating the ring's memory", layout.total_bytes())(e.into())
        })?;
        // SAFETY: the memory file is this process's own and sealed against resizing below, so
        // the mapping can never point past the file's end.
        let mut map = unsafe { memmap2::MmapOptions::new().map_mut(&file) }
            .map_err(sys("mapping the ring"))?;
        // Clients get the same descriptor: no resizing, and no writes through any mapping made
        // after this one (so a client cannot scribble on slots the daemon is filling).
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_FUTURE_WRITE
                    | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(nix_sys("sealing the ring"))?;
        let header = layout.header();
        map[..size_of::<RingHeader>()].copy_from_slice(header.as_bytes());
        Ok(Ring { layout, file, map })
    }

    /// The layout.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// The descriptor to pass to the client.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Slot `slot` for writing.
    ///
    /// # Panics
    /// If `slot` is not below `layout().slots`.
    pub fn slot_mut(&mut self, slot: u32) -> SlotMut<'_> {
        self.slots_mut(&[slot])
            .pop()
            .unwrap_or_else(|| unreachable!("one slot asked, one returned"))
    }

    /// Several distinct slots for writing at once, in the order asked (the producer fills the
    /// batches of several steps together).
    ///
    /// # Panics
    /// If a slot is not below `layout().slots`, or appears twice.
    pub fn slots_mut(&mut self, slots: &[u32]) -> Vec<SlotMut<'_>> {
        let l = self.layout;
        let mut all: Vec<Option<&mut [u8]>> = self.map[PAGE as usize..]
            .chunks_exact_mut(l.slot_bytes() as usize)
            .take(l.slots as usize)
            .map(Some)
            .collect();
        slots
            .iter()
            .map(|&slot| {
                let bytes = all
                    .get_mut(slot as usize)
                    .unwrap_or_else(|| panic!("slot {slot} out of range"))
                    .take()
                    .unwrap_or_else(|| panic!("slot {slot} asked twice"));
                SlotMut::over(bytes, &l)
            })
            .collect()
    }
}

impl<'a> SlotMut<'a> {
    /// The fields of one slot's bytes.
    fn over(bytes: &'a mut [u8], l: &RingLayout) -> SlotMut<'a> {
        let (head, images) = bytes.split_at_mut(l.images_offset() as usize);
        let images = &mut images[..(u64::from(l.batch_size) * l.image_bytes()) as usize];
        let (meta, rest) = head.split_at_mut(l.labels_offset() as usize);
        let (labels, rest) = rest.split_at_mut((l.ids_offset() - l.labels_offset()) as usize);
        let ids = &mut rest[..4 * l.batch_size as usize];
        // Offsets are multiples of 8 from a page-aligned mapping, so these casts cannot fail.
        let meta = SlotMeta::mut_from_prefix(meta).map(|(m, _)| m);
        let labels = <[u32]>::mut_from_bytes(labels);
        let ids = <[u32]>::mut_from_bytes(ids);
        match (meta, labels, ids) {
            (Ok(meta), Ok(labels), Ok(ids)) => SlotMut {
                meta,
                labels,
                ids,
                images,
            },
            _ => unreachable!("slot fields are aligned by construction"),
        }
    }
}

/// The client's end of a ring: a read-only mapping of the descriptor the daemon passed.
pub struct RingView {
    layout: RingLayout,
    map: Mmap,
}

impl RingView {
    /// Maps `fd` and checks that it holds the ring `layout` describes.
    pub fn attach(fd: OwnedFd, layout: RingLayout) -> Result<RingView, RingError> {
        layout.check(u64::MAX)?;
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(sys("reading the ring's size"))?
            .len();
        if len != layout.total_bytes() {
            return Err(RingError::Mismatch(format!(
                "{len} bytes, the layout needs {}",
                layout.total_bytes()
            )));
        }
        // SAFETY: the daemon sealed the file against shrinking, so the mapping stays backed;
        // the contents change under us only in slots the daemon owns, which we do not read.
        let map = unsafe { Mmap::map(&file) }.map_err(sys("mapping the ring"))?;
        let header = RingHeader::read_from_prefix(&map[..])
            .map(|(h, _)| h)
            .map_err(|_| RingError::Mismatch("too short for a header".into()))?;
        let want = layout.header();
        if header.as_bytes() != want.as_bytes() {
            return Err(RingError::Mismatch(format!(
                "header {header:?}, expected {want:?}"
            )));
        }
        Ok(RingView { layout, map })
    }

    /// The layout.
    pub fn layout(&self) -> &RingLayout {
        &self.layout
    }

    /// The whole mapping: header and every slot.
    pub fn memory(&self) -> &[u8] {
        &self.map[..]
    }

    /// Slot `slot`, or `None` if out of range.
    pub fn slot(&self, slot: u32) -> Option<SlotRef<'_>> {
        if slot >= self.layout.slots {
            return None;
        }
        let l = self.layout;
        let start = l.slot_offset(slot) as usize;
        let bytes = &self.map[start..start + l.slot_bytes() as usize];
        let (head, images) = bytes.split_at(l.images_offset() as usize);
        let images = &images[..(u64::from(l.batch_size) * l.image_bytes()) as usize];
        let (meta, rest) = head.split_at(l.labels_offset() as usize);
        let (labels, rest) = rest.split_at((l.ids_offset() - l.labels_offset()) as usize);
        let ids = &rest[..4 * l.batch_size as usize];
        let meta = SlotMeta::ref_from_prefix(meta).ok()?.0;
        Some(SlotRef {
            meta,
            labels: <[u32]>::ref_from_bytes(labels).ok()?,
            ids: <[u32]>::ref_from_bytes(ids).ok()?,
            images,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> RingLayout {
        RingLayout {
            slots: 3,
            batch_size: 5,
            height: 7,
            width: 9,
            channels: 3,
        }
    }

    #[test]
    fn layout_is_page_aligned_and_sized_by_the_formula() {
        let l = layout();
        assert_eq!(l.images_offset() % PAGE, 0);
        assert_eq!(l.slot_bytes() % PAGE, 0);
        assert!(l.slot_bytes() >= l.images_offset() + 5 * 7 * 9 * 3);
        assert_eq!(l.total_bytes(), PAGE + 3 * l.slot_bytes());
        // ImageNet A1 per rank: 256 × 224² × 3 = 38.5 MB per slot, plus one page of metadata.
        let a1 = RingLayout {
            slots: 4,
            batch_size: 256,
            height: 224,
            width: 224,
            channels: 3,
        };
        assert_eq!(a1.slot_bytes(), PAGE + 256 * 224 * 224 * 3);
        assert!(a1.check(1 << 30).is_ok());
        assert!(a1.check(100 << 20).is_err());
    }

    #[test]
    fn what_the_daemon_writes_the_client_reads_through_the_passed_descriptor() {
        let mut ring = Ring::create(layout(), 1 << 20).unwrap();
        for k in 0..3 {
            let s = ring.slot_mut(k);
            s.meta.epoch = 7;
            s.meta.step = u64::from(k) + 100;
            s.meta.count = 5;
            s.labels.iter_mut().for_each(|l| *l = k * 10);
            s.ids[4] = 99;
            s.images.fill(k as u8 + 1);
        }
        let fd = ring.fd().try_clone_to_owned().unwrap();
        let view = RingView::attach(fd, layout()).unwrap();
        for k in 0..3 {
            let s = view.slot(k).unwrap();
            assert_eq!((s.meta.epoch, s.meta.step), (7, u64::from(k) + 100));
            assert!(s.labels.iter().all(|&l| l == k * 10));
            assert_eq!(s.ids[4], 99);
            assert_eq!(s.images.len(), 5 * 7 * 9 * 3);
            assert!(s.images.iter().all(|&p| p == k as u8 + 1));
        }
        assert!(view.slot(3).is_none());
        // Slot memory does not overlap: a write to slot 1 leaves slots 0 and 2 as they were.
        ring.slot_mut(1).images.fill(200);
        assert!(view.slot(0).unwrap().images.iter().all(|&p| p == 1));
        assert!(view.slot(2).unwrap().images.iter().all(|&p| p == 3));
    }

    #[test]
    fn several_slots_are_handed_out_at_once_in_the_order_asked() {
        let mut ring = Ring::create(layout(), 1 << 20).unwrap();
        for (k, s) in ring.slots_mut(&[2, 0]).into_iter().enumerate() {
            s.images.fill(k as u8 + 10);
            s.meta.step = k as u64;
        }
        let fd = ring.fd().try_clone_to_owned().unwrap();
        let view = RingView::attach(fd, layout()).unwrap();
        assert!(view.slot(2).unwrap().images.iter().all(|&p| p == 10));
        assert!(view.slot(0).unwrap().images.iter().all(|&p| p == 11));
        assert!(view.slot(1).unwrap().images.iter().all(|&p| p == 0));
        assert_eq!(view.slot(0).unwrap().meta.step, 1);
        let twice = std::panic::catch_unwind(move || {
            ring.slots_mut(&[1, 1]);
        });
        assert!(twice.is_err(), "the same slot twice must panic");
    }

    #[test]
    fn the_client_cannot_resize_or_write_and_a_wrong_layout_is_refused() {
        let ring = Ring::create(layout(), 1 << 20).unwrap();
        let file = File::from(ring.fd().try_clone_to_owned().unwrap());
        assert!(file.set_len(PAGE).is_err(), "shrinking must be sealed");
        assert!(file.set_len(1 << 30).is_err(), "growing must be sealed");
        // SAFETY: test-only mapping of a sealed file; it is expected to fail.
        assert!(unsafe { MmapMut::map_mut(&file) }.is_err(), "writable map");
        let mut wrong = layout();
        wrong.batch_size = 4;
        let fd = ring.fd().try_clone_to_owned().unwrap();
        assert!(matches!(
            RingView::attach(fd, wrong),
            Err(RingError::Mismatch(_))
        ));
    }
}

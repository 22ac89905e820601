//! A step's pixels to the device, and the bytes copied on the host on the way, counted.
//!
//! A batch in a loader ring slot ([`Pixels::Slot`]) goes to burn as shared bytes over the slot
//! itself (`Bytes::from_shared`): nothing is copied on the host. On the CPU, burn-flex keeps
//! those bytes as the uint8 tensor's storage; on CUDA, the ring's mapping is registered once
//! as page-locked memory (`cuMemHostRegister`, read-only) and the bytes are marked pinned, so
//! cubecl copies them to the device by DMA without its staging buffer (cubecl-server's
//! `Staging::of`: a source under 100 MB that is not pinned is first copied into pinned
//! memory). Where registration fails, that is said once and the staging copy is counted. The
//! slot goes back to the daemon when the last holder drops it: the step's batch and burn's
//! bytes, which burn drops once the copy is done.
//!
//! Pixels the caller keeps ([`Pixels::Host`]: synthetic batches, the in-process feed) are
//! copied into a buffer burn owns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::{AllocationProperty, Bytes, Device, Tensor};
use loader::wire::client::Batch;

use crate::data::normalize::{BatchError, upload_pixels};
use crate::device::DeviceKind;

/// Where a step's pixels are.
pub enum Pixels<'a> {
    /// Bytes the caller keeps: copied once on the host.
    Host(&'a [u8]),
    /// A loader ring slot, shared with the upload without a copy.
    Slot(Arc<Batch>),
}

impl Pixels<'_> {
    /// The `[n, h, w, 3]` uint8 pixels.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Pixels::Host(b) => b,
            Pixels::Slot(batch) => batch.images(),
        }
    }
}

/// A slot's images as the owner of burn's shared bytes: dropping it drops the step's last
/// hold on the batch, which releases the slot.
struct SlotImages(Arc<Batch>);

impl AsRef<[u8]> for SlotImages {
    fn as_ref(&self) -> &[u8] {
        self.0.images()
    }
}

/// Uploads batches to one device and counts the bytes copied on the host.
pub struct Uploader {
    kind: DeviceKind,
    copied: AtomicU64,
    uploads: AtomicU64,
    /// Nanoseconds spent issuing uploads on the host.
    issuing_ns: AtomicU64,
    #[cfg(feature = "cuda")]
    pinned: pinned::Registry,
}

impl Uploader {
    /// An uploader to a device of `kind`.
    pub fn new(kind: DeviceKind) -> Uploader {
        Uploader {
            kind,
            copied: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            issuing_ns: AtomicU64::new(0),
            #[cfg(feature = "cuda")]
            pinned: pinned::Registry::default(),
        }
    }

    /// Bytes copied on the host so far, by us and by the backend's staging (the DMA to the
    /// device not counted), and the uploads they were copied for.
    pub fn host_bytes_copied(&self) -> (u64, u64) {
        (
            self.copied.load(Ordering::Relaxed),
            self.uploads.load(Ordering::Relaxed),
        )
    }

    /// Seconds spent on the host issuing uploads so far: our copy, the backend's staging copy
    /// and the enqueueing (the device's copy runs behind, overlapped with compute).
    pub(crate) fn issuing_s(&self) -> f64 {
        self.issuing_ns.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Something to say once about the uploads (a ring that could not be page-locked).
    pub(crate) fn take_note(&self) -> Option<String> {
        #[cfg(feature = "cuda")]
        {
            self.pinned.take_note()
        }
        #[cfg(not(feature = "cuda"))]
        {
            None
        }
    }

    /// `[n, 3, h, w]` floats in 0..255 on `device`, from `[n, h, w, 3]` uint8 `pixels`.
    ///
    /// # Errors
    /// [`BatchError`] when the pixels do not fill the shape.
    pub fn upload(
        &self,
        pixels: &Pixels<'_>,
        shape: [usize; 3],
        device: &Device,
    ) -> Result<Tensor<4>, BatchError> {
        let started = std::time::Instant::now();
        let len = pixels.bytes().len();
        let (bytes, ours) = match pixels {
            Pixels::Host(b) => (Bytes::from_bytes_vec(b.to_vec()), len),
            Pixels::Slot(batch) => {
                let property = self.property(batch);
                let shared = bytes::Bytes::from_owner(SlotImages(Arc::clone(batch)));
                (Bytes::from_shared(shared, property), 0)
            }
        };
        let staged = self.staged(len, bytes.property());
        let uploaded = upload_pixels(bytes, shape, device)?;
        self.copied
            .fetch_add((ours + staged) as u64, Ordering::Relaxed);
        self.uploads.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.issuing_ns.fetch_add(ns, Ordering::Relaxed);
        Ok(uploaded)
    }

    /// How a slot's bytes are held: pinned where its ring is page-locked for this device.
    fn property(&self, batch: &Batch) -> AllocationProperty {
        match self.kind {
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda(ordinal) if self.pinned.register(batch, ordinal) => {
                AllocationProperty::Pinned
            }
            _ => {
                let _ = batch;
                AllocationProperty::Other
            }
        }
    }

    /// Bytes the backend copies on the host before the DMA: CUDA stages what is not pinned
    /// (cubecl-server's rule); burn-flex keeps the bytes it is given; the CubeCL CPU runtime
    /// copies them into a buffer of its own memory pool (its server's `write`).
    fn staged(&self, len: usize, property: AllocationProperty) -> usize {
        match self.kind {
            DeviceKind::Flex => 0,
            DeviceKind::CubeCpu => len,
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda(_) => {
                if cubecl_server::command::Staging::of(len, property).through_pinned {
                    len
                } else {
                    0
                }
            }
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda(_) => {
                let _ = (len, property);
                0
            }
        }
    }
}

/// Rings registered as page-locked memory with the CUDA driver.
#[cfg(feature = "cuda")]
mod pinned {
    use std::sync::{Arc, Mutex};

    use cudarc::driver::sys;
    use loader::wire::client::Batch;
    use loader::wire::ring::RingView;

    /// A ring and whether its registration succeeded.
    struct Registered {
        ring: Arc<RingView>,
        ordinal: usize,
        ok: bool,
    }

    /// The rings met so far, each registered once; a ring is unregistered when only this
    /// registry still holds it (every batch of it dropped), before its mapping goes away.
    #[derive(Default)]
    pub(super) struct Registry {
        rings: Mutex<Vec<Registered>>,
        note: Mutex<Option<String>>,
        said: std::sync::atomic::AtomicBool,
    }

    impl Registry {
        /// Whether the ring of `batch` is page-locked for device `ordinal` (registering it
        /// the first time it is met).
        pub(super) fn register(&self, batch: &Batch, ordinal: usize) -> bool {
            let Ok(mut rings) = self.rings.lock() else {
                return false;
            };
            let base = batch.ring_memory().as_ptr();
            if let Some(r) = rings
                .iter()
                .find(|r| r.ring.memory().as_ptr() == base && r.ordinal == ordinal)
            {
                return r.ok;
            }
            // Rings of earlier connections that nothing else holds: unregister, then unmap.
            rings.retain(|r| {
                if Arc::strong_count(&r.ring) > 1 {
                    return true;
                }
                if r.ok {
                    unregister(&r.ring, r.ordinal);
                }
                false
            });
            let ring = batch.ring();
            let result = register(&ring, ordinal);
            if let Err(e) = &result
                && !self.said.swap(true, std::sync::atomic::Ordering::Relaxed)
                && let Ok(mut note) = self.note.lock()
            {
                *note = Some(format!(
                    "the loader's ring could not be page-locked for cuda:{ordinal} \
                     (cuMemHostRegister: {e:?}); batches go through cubecl's pinned staging \
                     buffer, one host copy each"
                ));
            }
            let ok = result.is_ok();
            rings.push(Registered { ring, ordinal, ok });
            ok
        }

        pub(super) fn take_note(&self) -> Option<String> {
            self.note.lock().ok().and_then(|mut n| n.take())
        }
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            if let Ok(rings) = self.rings.get_mut() {
                for r in rings.drain(..).filter(|r| r.ok) {
                    unregister(&r.ring, r.ordinal);
                }
            }
        }
    }

    /// Runs `f` with device `ordinal`'s primary context (the one cubecl uses) current.
    fn in_context(ordinal: usize, f: impl FnOnce() -> sys::CUresult) -> Result<(), sys::CUresult> {
        let check = |r: sys::CUresult| {
            if r == sys::CUresult::CUDA_SUCCESS {
                Ok(())
            } else {
                Err(r)
            }
        };
        let ordinal =
            i32::try_from(ordinal).map_err(|_| sys::CUresult::CUDA_ERROR_INVALID_DEVICE)?;
        let mut device: sys::CUdevice = 0;
        let mut context: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: plain driver calls with out-pointers to locals; the driver was initialized
        // by cubecl before any batch is uploaded. The primary context is retained for the
        // call and released after, leaving cubecl's own reference as it was.
        unsafe {
            check(sys::cuDeviceGet(&mut device, ordinal))?;
            check(sys::cuDevicePrimaryCtxRetain(&mut context, device))?;
            let pushed = check(sys::cuCtxPushCurrent_v2(context));
            let result = pushed.and_then(|()| check(f()));
            if pushed.is_ok() {
                let mut popped: sys::CUcontext = std::ptr::null_mut();
                let _ = sys::cuCtxPopCurrent_v2(&mut popped);
            }
            let _ = sys::cuDevicePrimaryCtxRelease_v2(device);
            result
        }
    }

    fn register(ring: &RingView, ordinal: usize) -> Result<(), sys::CUresult> {
        let memory = ring.memory();
        let (ptr, len) = (memory.as_ptr(), memory.len());
        in_context(
            ordinal,
            // SAFETY: the range is the ring's whole mapping, which `Registered` keeps alive
            // until it is unregistered; read-only, as it is mapped.
            || unsafe {
                sys::cuMemHostRegister_v2(
                    ptr as *mut std::ffi::c_void,
                    len,
                    sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_READ_ONLY,
                )
            },
        )
    }

    fn unregister(ring: &RingView, ordinal: usize) {
        let ptr = ring.memory().as_ptr();
        // SAFETY: `ptr` was registered by `register` and is still mapped (the caller holds
        // the ring); nothing reads it through the driver once its batches are dropped.
        let _ = in_context(ordinal, || unsafe {
            sys::cuMemHostUnregister(ptr as *mut std::ffi::c_void)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_pixels_are_copied_once_and_counted() {
        let device = Device::flex();
        let up = Uploader::new(DeviceKind::Flex);
        let bytes = vec![7u8; 2 * 4 * 4 * 3];
        let x = up
            .upload(&Pixels::Host(&bytes), [2, 4, 4], &device)
            .expect("shape");
        assert_eq!(x.dims(), [2, 3, 4, 4]);
        assert_eq!(up.host_bytes_copied(), (96, 1));
        let e = up
            .upload(&Pixels::Host(&bytes[..95]), [2, 4, 4], &device)
            .unwrap_err();
        assert!(e.to_string().contains("95 bytes"), "{e}");
    }
}

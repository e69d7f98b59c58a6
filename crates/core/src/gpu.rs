//! The CUDA copy engine (feature `cuda`): gathers an engine block from per-layer device tensors
//! into a host block object, and scatters one back, with asynchronous copies on a dedicated
//! stream. The driver is loaded at run time: a machine without one gets an `Unavailable`
//! error from [`CudaCopier::new`], never a panic (cudarc's safe `CudaContext::new` panics when
//! no driver is present, so this module checks `is_culib_present()` first and uses the driver
//! API directly).

use cudarc::driver::sys;

use crate::error::{Error, ErrorKind, Result};
use crate::layout::KvLayout;

#[derive(Clone, Copy)]
enum Direction {
    ToHost,
    ToDevice,
}

/// A CUDA stream on one device, for block copies between device KV tensors and host memory.
pub struct CudaCopier {
    ctx: sys::CUcontext,
    device: sys::CUdevice,
    stream: sys::CUstream,
}

// SAFETY: the context and stream handles are usable from any thread once made current there,
// which every method does first.
unsafe impl Send for CudaCopier {}

fn check(r: sys::CUresult, what: &str) -> Result<()> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Unavailable,
            format!("CUDA {what} failed: {r:?}"),
        ))
    }
}

impl CudaCopier {
    /// Opens device `ordinal`'s primary context and a non-blocking stream. Without a CUDA
    /// driver this is an `Unavailable` error (fall back to host copies, or report misses).
    pub fn new(ordinal: i32) -> Result<Self> {
        // SAFETY: only probes whether libcuda can be loaded.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "no CUDA driver (libcuda) on this machine",
            ));
        }
        // SAFETY: plain driver API calls with valid out-pointers; results are checked.
        unsafe {
            check(sys::cuInit(0), "cuInit")?;
            let mut device: sys::CUdevice = 0;
            check(sys::cuDeviceGet(&mut device, ordinal), "cuDeviceGet")?;
            let mut ctx: sys::CUcontext = std::ptr::null_mut();
            check(
                sys::cuDevicePrimaryCtxRetain(&mut ctx, device),
                "cuDevicePrimaryCtxRetain",
            )?;
            check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
            let mut stream: sys::CUstream = std::ptr::null_mut();
            check(
                sys::cuStreamCreate(
                    &mut stream,
                    sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
                ),
                "cuStreamCreate",
            )?;
            Ok(CudaCopier {
                ctx,
                device,
                stream,
            })
        }
    }

    fn current(&self) -> Result<()> {
        // SAFETY: a context retained in `new`.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }

    /// Copies block `block` from the device layer tensors into `object` (host memory), then
    /// waits for the stream.
    pub fn gather(
        &self,
        layout: &KvLayout,
        layers: &[u64],
        block: u32,
        object: &mut [u8],
    ) -> Result<()> {
        self.copy(
            Direction::ToHost,
            layout,
            layers,
            block,
            object.as_mut_ptr(),
            object.len(),
        )
    }

    /// Copies `object` (host memory) into block `block` of the device layer tensors, then waits
    /// for the stream.
    pub fn scatter(
        &self,
        layout: &KvLayout,
        object: &[u8],
        layers: &[u64],
        block: u32,
    ) -> Result<()> {
        self.copy(
            Direction::ToDevice,
            layout,
            layers,
            block,
            object.as_ptr() as *mut u8,
            object.len(),
        )
    }

    /// The one copy path: every span of the block's copy plan, asynchronously, then a wait.
    fn copy(
        &self,
        dir: Direction,
        layout: &KvLayout,
        layers: &[u64],
        block: u32,
        host: *mut u8,
        len: usize,
    ) -> Result<()> {
        if layers.len() != layout.num_layers() as usize {
            return Err(Error::invalid(format!(
                "{} layer pointers given; the layout has {} layers",
                layers.len(),
                layout.num_layers()
            )));
        }
        if layers.contains(&0) {
            return Err(Error::invalid("a device layer pointer is 0"));
        }
        if len as u64 != layout.object_len() {
            return Err(Error::invalid(format!(
                "object buffer is {len} bytes; the layout's objects are {}",
                layout.object_len()
            )));
        }
        self.current()?;
        let mut failed = None;
        for span in layout.copy_plan(block)? {
            let dev = layers[span.layer] + span.engine.start as u64;
            // SAFETY: `host` is valid for `len` bytes and the span lies inside the object (the
            // plan tiles it); `dev` lies inside the registered device tensor.
            let h = unsafe { host.add(span.object.start) };
            let n = span.object.len();
            // SAFETY: as above; the caller keeps both buffers alive until the wait below.
            let r = unsafe {
                match dir {
                    Direction::ToHost => sys::cuMemcpyDtoHAsync_v2(h.cast(), dev, n, self.stream),
                    Direction::ToDevice => {
                        sys::cuMemcpyHtoDAsync_v2(dev, h.cast_const().cast(), n, self.stream)
                    }
                }
            };
            if let Err(e) = check(r, "cuMemcpyAsync") {
                failed = Some(e);
                break;
            }
        }
        // Every copy already enqueued must end before the caller may reuse the buffers: wait
        // for the stream also after a failed enqueue.
        // SAFETY: our stream.
        let synced = check(
            unsafe { sys::cuStreamSynchronize(self.stream) },
            "cuStreamSynchronize",
        );
        match failed {
            Some(e) => Err(e),
            None => synced,
        }
    }

    /// Allocates `bytes` of device memory (for tests and benches); free with [`CudaCopier::free`].
    pub fn alloc(&self, bytes: usize) -> Result<u64> {
        self.current()?;
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer.
        check(unsafe { sys::cuMemAlloc_v2(&mut p, bytes) }, "cuMemAlloc")?;
        Ok(p)
    }

    /// Frees memory from [`CudaCopier::alloc`].
    pub fn free(&self, p: u64) -> Result<()> {
        self.current()?;
        // SAFETY: a pointer from cuMemAlloc.
        check(unsafe { sys::cuMemFree_v2(p) }, "cuMemFree")
    }
}

impl Drop for CudaCopier {
    fn drop(&mut self) {
        // SAFETY: handles created in `new`; errors at teardown are ignored (never panic in Drop).
        unsafe {
            sys::cuCtxSetCurrent(self.ctx);
            sys::cuStreamDestroy_v2(self.stream);
            sys::cuDevicePrimaryCtxRelease_v2(self.device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::LayoutKind;
    use crate::KvDtype;

    /// On a machine without a driver (CI), opening a device is an error, not a panic.
    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        match CudaCopier::new(0) {
            Ok(_) => assert!(
                unsafe { sys::is_culib_present() },
                "a copier without a driver"
            ),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Unavailable),
        }
    }

    /// Gather from device tensors and scatter into others, against the host copy engine.
    /// Needs a GPU: `ffi/tests/gpu/run.sh` runs it.
    #[test]
    #[ignore = "needs a CUDA GPU: run ffi/tests/gpu/run.sh"]
    fn device_gather_scatter_matches_host() {
        let copier = CudaCopier::new(0).expect("a CUDA device");
        let layout =
            KvLayout::new(LayoutKind::VllmFlash, 4, 32, 16, 8, 128, KvDtype::Bf16).unwrap();
        let lb = layout.layer_bytes() as usize;
        let host: Vec<Vec<u8>> = (0..4)
            .map(|l| (0..lb).map(|i| (i * 31 + l * 7) as u8).collect())
            .collect();
        let dev: Vec<u64> = (0..4).map(|_| copier.alloc(lb).unwrap()).collect();
        let dev2: Vec<u64> = (0..4).map(|_| copier.alloc(lb).unwrap()).collect();
        for (d, h) in dev.iter().zip(&host) {
            check(
                unsafe { sys::cuMemcpyHtoD_v2(*d, h.as_ptr().cast(), lb) },
                "upload",
            )
            .unwrap();
        }
        let mut obj = vec![0u8; layout.object_len() as usize];
        let mut want = vec![0u8; obj.len()];
        let views: Vec<&[u8]> = host.iter().map(|h| h.as_slice()).collect();
        for block in [0u32, 7, 31] {
            copier.gather(&layout, &dev, block, &mut obj).unwrap();
            layout.gather(&views, block, &mut want).unwrap();
            assert!(
                obj == want,
                "device gather of block {block} differs from host gather"
            );
            copier.scatter(&layout, &obj, &dev2, 31 - block).unwrap();
            let mut back = vec![0u8; obj.len()];
            copier
                .gather(&layout, &dev2, 31 - block, &mut back)
                .unwrap();
            assert!(back == obj, "scatter then gather is not the identity");
        }
        for p in dev.into_iter().chain(dev2) {
            copier.free(p).unwrap();
        }
    }
}

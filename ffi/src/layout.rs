//! KV layouts and the host copy engine through the ABI: an engine describes its KV memory once,
//! then gathers an engine block into a contiguous block object, or scatters one back.

use std::ffi::c_char;

use kvtier_core::layout::{KvLayout, LayoutKind};
use kvtier_core::KvDtype;

use crate::status::{arg, guard, kvt_status, slice_arg, str_arg, FfiError};

/// The shape of an engine's KV cache (see `KvLayout` in the core crate).
#[repr(C)]
pub struct kvt_layout_params {
    /// "vllm-flash" (`[2, num_blocks, block_size, kv_heads, head_size]` per layer), "vllm-cpu"
    /// (`[num_blocks, kv_heads, block_size, 2*head_size]`) or "layer-major"
    /// (`[num_blocks, 2, block_size, kv_heads, head_size]`).
    pub kind: *const c_char,
    /// Layers (of this rank).
    pub num_layers: u32,
    /// Blocks in each layer's tensor.
    pub num_blocks: u32,
    /// Tokens per block.
    pub block_size: u32,
    /// KV heads (of this rank).
    pub num_kv_heads: u32,
    /// Head size in elements.
    pub head_size: u32,
    /// Element type, as for namespaces.
    pub dtype: *const c_char,
}

/// An opaque, validated layout.
pub struct kvt_layout {
    pub(crate) layout: KvLayout,
}

/// Validates `params` and creates a layout in `*out`. Free it with [`kvt_layout_free`].
///
/// # Safety
/// `params` must point to valid params with valid strings; `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn kvt_layout_new(
    params: *const kvt_layout_params,
    out: *mut *mut kvt_layout,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let p = unsafe { arg(params, "params") }?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        // SAFETY: per the contract.
        let (kind, dtype) = unsafe {
            (
                str_arg(p.kind, "params.kind")?,
                str_arg(p.dtype, "params.dtype")?,
            )
        };
        let layout = KvLayout::new(
            LayoutKind::parse(kind)?,
            p.num_layers,
            p.num_blocks,
            p.block_size,
            p.num_kv_heads,
            p.head_size,
            KvDtype::parse(dtype)?,
        )?;
        // SAFETY: out is non-NULL and writable.
        unsafe { *out = Box::into_raw(Box::new(kvt_layout { layout })) };
        Ok(())
    })
}

/// Frees a layout. NULL is a no-op.
///
/// # Safety
/// `layout` must be NULL or a handle from [`kvt_layout_new`] not freed before.
#[no_mangle]
pub unsafe extern "C" fn kvt_layout_free(layout: *mut kvt_layout) {
    if !layout.is_null() {
        // SAFETY: created by Box::into_raw in kvt_layout_new.
        drop(unsafe { Box::from_raw(layout) });
    }
}

/// Payload bytes of one block object of this layout; 0 for NULL.
///
/// # Safety
/// `layout` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn kvt_layout_object_len(layout: *const kvt_layout) -> u64 {
    // SAFETY: per the contract.
    unsafe { layout.as_ref() }.map_or(0, |l| l.layout.object_len())
}

/// Bytes of one layer's tensor of this layout; 0 for NULL.
///
/// # Safety
/// `layout` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn kvt_layout_layer_bytes(layout: *const kvt_layout) -> u64 {
    // SAFETY: per the contract.
    unsafe { layout.as_ref() }.map_or(0, |l| l.layout.layer_bytes())
}

/// Checks the common arguments of gather and scatter and returns the layer pointers.
///
/// # Safety
/// As for [`kvt_gather`].
unsafe fn layers_arg<'a>(
    layout: &KvLayout,
    layers: *const *mut u8,
    n_layers: usize,
) -> Result<&'a [*mut u8], FfiError> {
    if n_layers != layout.num_layers() as usize {
        return Err(FfiError::invalid(format!(
            "{n_layers} layer pointers given; the layout has {} layers",
            layout.num_layers()
        )));
    }
    // SAFETY: per the contract.
    let ptrs = unsafe { slice_arg(layers, n_layers, "layers") }?;
    if let Some(i) = ptrs.iter().position(|p| p.is_null()) {
        return Err(FfiError::null(&format!("layers[{i}]")));
    }
    Ok(ptrs)
}

/// Copies engine block `block` from the layer tensors (`n_layers` pointers, each to
/// `kvt_layout_layer_bytes` bytes of host memory) into `dst`, which must be exactly
/// `kvt_layout_object_len` bytes.
///
/// # Safety
/// Every layer pointer must be valid for reads of the layer's bytes; `dst` for writes of
/// `dst_len` bytes; none may overlap `dst`.
#[no_mangle]
pub unsafe extern "C" fn kvt_gather(
    layout: *const kvt_layout,
    layers: *const *mut u8,
    n_layers: usize,
    block: u32,
    dst: *mut u8,
    dst_len: usize,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let l = &unsafe { arg(layout, "layout") }?.layout;
        // SAFETY: per the contract.
        let ptrs = unsafe { layers_arg(l, layers, n_layers) }?;
        if dst.is_null() {
            return Err(FfiError::null("dst"));
        }
        let len = l.layer_bytes() as usize;
        // SAFETY: each pointer is valid for `len` bytes per the contract.
        let views: Vec<&[u8]> = ptrs
            .iter()
            .map(|&p| unsafe { std::slice::from_raw_parts(p as *const u8, len) })
            .collect();
        // SAFETY: dst is valid for dst_len bytes per the contract.
        let out = unsafe { std::slice::from_raw_parts_mut(dst, dst_len) };
        l.gather(&views, block, out)?;
        Ok(())
    })
}

/// Copies a block object (`src`, exactly `kvt_layout_object_len` bytes) into engine block
/// `block` of the layer tensors.
///
/// # Safety
/// Every layer pointer must be valid for writes of the layer's bytes; `src` for reads of
/// `src_len` bytes; none may overlap `src`.
#[no_mangle]
pub unsafe extern "C" fn kvt_scatter(
    layout: *const kvt_layout,
    layers: *const *mut u8,
    n_layers: usize,
    block: u32,
    src: *const u8,
    src_len: usize,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let l = &unsafe { arg(layout, "layout") }?.layout;
        // SAFETY: per the contract.
        let ptrs = unsafe { layers_arg(l, layers, n_layers) }?;
        // SAFETY: per the contract.
        let src = unsafe { slice_arg(src, src_len, "src") }?;
        let len = l.layer_bytes() as usize;
        // SAFETY: each pointer is valid for `len` writable bytes per the contract.
        let mut views: Vec<&mut [u8]> = ptrs
            .iter()
            .map(|&p| unsafe { std::slice::from_raw_parts_mut(p, len) })
            .collect();
        l.scatter(src, &mut views, block)?;
        Ok(())
    })
}

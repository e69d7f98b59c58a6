//! Namespaces and block keys through the ABI (the key spec, `docs/key-spec.md`).

use std::ffi::c_char;

use kvtier_core::key::{BlockKey, Namespace, NamespaceParams};
use kvtier_core::KvDtype;

use crate::status::{arg, guard, kvt_status, slice_arg, str_arg, FfiError};

/// A 128-bit block key as two little-endian halves: `key = hi << 64 | lo`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct kvt_key {
    /// Low 64 bits.
    pub lo: u64,
    /// High 64 bits.
    pub hi: u64,
}

impl From<BlockKey> for kvt_key {
    fn from(k: BlockKey) -> Self {
        let v = k.as_u128();
        kvt_key {
            lo: v as u64,
            hi: (v >> 64) as u64,
        }
    }
}

impl From<kvt_key> for BlockKey {
    fn from(k: kvt_key) -> Self {
        BlockKey::from_u128(((k.hi as u128) << 64) | k.lo as u128)
    }
}

/// Everything that goes into a namespace (see the key spec). Strings are NUL-terminated UTF-8;
/// `revision` may be NULL (empty); `salt` may be NULL when `salt_len` is 0.
#[repr(C)]
pub struct kvt_namespace_params {
    /// Model identity, e.g. "meta-llama/Llama-3.1-8B-Instruct".
    pub model: *const c_char,
    /// Weights revision, or NULL.
    pub revision: *const c_char,
    /// KV dtype: "float16", "bfloat16", "float32", "fp8_e4m3", "fp8_e5m2" (or an alias such as "bf16").
    pub kv_dtype: *const c_char,
    /// Engine layout id: "vllm-flash", "vllm-cpu", "layer-major".
    pub layout_id: *const c_char,
    /// Tokens per block.
    pub tokens_per_block: u32,
    /// Tensor-parallel size.
    pub tp_size: u32,
    /// Tensor-parallel rank.
    pub tp_rank: u32,
    /// Pipeline-parallel size.
    pub pp_size: u32,
    /// Pipeline-parallel rank.
    pub pp_rank: u32,
    /// Tenant / cache salt bytes.
    pub salt: *const u8,
    /// Length of `salt`.
    pub salt_len: usize,
}

/// The extra key items of one block (LoRA name, multimodal hashes): `n_items` byte strings.
#[repr(C)]
pub struct kvt_extra {
    /// Pointers to the items.
    pub items: *const *const u8,
    /// Lengths of the items.
    pub lens: *const usize,
    /// Number of items.
    pub n_items: usize,
}

/// An opaque, validated namespace.
pub struct kvt_namespace {
    ns: Namespace,
}

/// Validates `params` and creates a namespace in `*out`. Free it with [`kvt_namespace_free`].
///
/// # Safety
/// `params` must point to a valid `kvt_namespace_params`; `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn kvt_namespace_new(
    params: *const kvt_namespace_params,
    out: *mut *mut kvt_namespace,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the function's contract.
        let p = unsafe { arg(params, "params") }?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        // SAFETY: string and buffer arguments are valid per the contract.
        let params = unsafe {
            NamespaceParams {
                model: str_arg(p.model, "params.model")?.to_string(),
                revision: if p.revision.is_null() {
                    String::new()
                } else {
                    str_arg(p.revision, "params.revision")?.to_string()
                },
                kv_dtype: KvDtype::parse(str_arg(p.kv_dtype, "params.kv_dtype")?)?,
                layout_id: str_arg(p.layout_id, "params.layout_id")?.to_string(),
                tokens_per_block: p.tokens_per_block,
                tp_size: p.tp_size,
                tp_rank: p.tp_rank,
                pp_size: p.pp_size,
                pp_rank: p.pp_rank,
                salt: slice_arg(p.salt, p.salt_len, "params.salt")?.to_vec(),
            }
        };
        let ns = Namespace::new(&params)?;
        // SAFETY: out is non-NULL and writable.
        unsafe { *out = Box::into_raw(Box::new(kvt_namespace { ns })) };
        Ok(())
    })
}

/// Frees a namespace. NULL is a no-op.
///
/// # Safety
/// `ns` must be NULL or a handle from [`kvt_namespace_new`] not freed before.
#[no_mangle]
pub unsafe extern "C" fn kvt_namespace_free(ns: *mut kvt_namespace) {
    if !ns.is_null() {
        // SAFETY: created by Box::into_raw in kvt_namespace_new.
        drop(unsafe { Box::from_raw(ns) });
    }
}

/// Writes the namespace digest (`key[-1]` of every chain) to `*out`.
///
/// # Safety
/// `ns` must be a live handle; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn kvt_namespace_digest(
    ns: *const kvt_namespace,
    out: *mut kvt_key,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let ns = unsafe { arg(ns, "ns") }?;
        if out.is_null() {
            return Err(FfiError::null("out"));
        }
        // SAFETY: non-NULL, writable.
        unsafe { *out = ns.ns.digest().into() };
        Ok(())
    })
}

/// The number of keys `n_tokens` tokens get (full blocks only). 0 for a NULL handle.
///
/// # Safety
/// `ns` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn kvt_block_count(ns: *const kvt_namespace, n_tokens: usize) -> usize {
    // SAFETY: per the contract.
    match unsafe { ns.as_ref() } {
        Some(ns) => n_tokens / ns.ns.tokens_per_block() as usize,
        None => 0,
    }
}

/// Computes the keys of every full block of `tokens` into `out` (room for `out_cap` keys) and
/// their number into `*out_len`. `extras` (may be NULL when `n_extras` is 0) gives the extra key
/// items of blocks `0..n_extras`. Fails with `KVT_ERR_INVALID` when `out_cap` is too small (use
/// [`kvt_block_count`]) or when there are more extras than blocks.
///
/// # Safety
/// `tokens` must hold `n_tokens` values, `extras` `n_extras` entries whose item arrays are valid,
/// `out` room for `out_cap` keys.
#[no_mangle]
pub unsafe extern "C" fn kvt_block_keys(
    ns: *const kvt_namespace,
    tokens: *const u32,
    n_tokens: usize,
    extras: *const kvt_extra,
    n_extras: usize,
    out: *mut kvt_key,
    out_cap: usize,
    out_len: *mut usize,
) -> kvt_status {
    guard(|| {
        // SAFETY: per the contract.
        let ns = &unsafe { arg(ns, "ns") }?.ns;
        // SAFETY: per the contract.
        let tokens = unsafe { slice_arg(tokens, n_tokens, "tokens") }?;
        // SAFETY: per the contract.
        let extras = unsafe { slice_arg(extras, n_extras, "extras") }?;
        if out_len.is_null() {
            return Err(FfiError::null("out_len"));
        }
        let need = n_tokens / ns.tokens_per_block() as usize;
        if out_cap < need {
            return Err(FfiError::invalid(format!(
                "`out_cap` is {out_cap}; {n_tokens} tokens need room for {need} keys"
            )));
        }
        if need > 0 && out.is_null() {
            return Err(FfiError::null("out"));
        }
        let mut items: Vec<Vec<&[u8]>> = Vec::with_capacity(extras.len());
        for (b, e) in extras.iter().enumerate() {
            // SAFETY: per the contract.
            let ptrs = unsafe { slice_arg(e.items, e.n_items, "extras[].items") }?;
            // SAFETY: per the contract.
            let lens = unsafe { slice_arg(e.lens, e.n_items, "extras[].lens") }?;
            let mut v = Vec::with_capacity(ptrs.len());
            for (i, (&p, &len)) in ptrs.iter().zip(lens).enumerate() {
                // SAFETY: per the contract.
                v.push(unsafe { slice_arg(p, len, &format!("extras[{b}].items[{i}]")) }?);
            }
            items.push(v);
        }
        let refs: Vec<&[&[u8]]> = items.iter().map(|v| v.as_slice()).collect();
        let keys = ns.block_keys_with_extras(tokens, &refs)?;
        for (i, k) in keys.iter().enumerate() {
            // SAFETY: out has room for out_cap >= need = keys.len() entries.
            unsafe { *out.add(i) = (*k).into() };
        }
        // SAFETY: non-NULL, writable.
        unsafe { *out_len = keys.len() };
        Ok(())
    })
}
